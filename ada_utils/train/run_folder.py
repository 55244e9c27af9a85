"""The run folder of ``train``: what it holds, checking it before a run, checkpoints, the finished head.

Run folder: ``config.json`` (every parameter, data hash, versions, status), ``log.jsonl`` (one line per step),
``checkpoint.safetensors`` (last good state: weights, optimiser, RNG and step, with its metadata inside) and
``checkpoint.prev.safetensors`` (the one before it), ``head.safetensors`` (final weights), ``checksums.json`` (size
and SHA-256 of each of these, taken when written: a file damaged since is named, never trusted).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from ada_utils.files import (DamagedFileError, copy_record, ensure_space, matches_record_of, recorded_damage,
                             save_safetensors, space_errors)
from ada_utils.heads import DomainHeads
from ada_utils.train.config import RESUME_FREE

if TYPE_CHECKING:
    import numpy as np

    from ada_utils.train.config import TrainConfig
    from ada_utils.train.data import TrainData
    from ada_utils.train.step import Step


def run_name(cfg: TrainConfig, data: TrainData, activations: TrainData | None = None) -> str:
    """A run's folder name, from what it computes: ``<method>-seed<k>-<10 hex digits>``.

    The digits hash every setting that changes the result (all of ``cfg`` but :data:`RESUME_FREE`) and the training
    data as the run's header fingerprints it (the features: so the images, the data root, the encoder's weights and
    preprocessing; with ``activations``, theirs too). A new backbone, data root or setting gets a folder of its own
    and never collides with an earlier run; the same ones find their run again, to resume or reuse it. Call it with
    the data ``train`` gets (after the validation split).
    """
    import hashlib

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_FREE}
    key = {"config": settings, "data": data.fingerprint(with_pairs=cfg.unit.reads_pairs),
           "activations": None if activations is None else activations.fingerprint(with_pairs=False)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{cfg.method}-seed{cfg.seed}-{digest}"


def find_run(folder: Path, *, root: Path, **config: object) -> Path | None:
    """The newest finished run in ``folder`` evaluated on ``root`` (its ``metrics.json``) whose configuration has
    every value of ``config`` (e.g. ``method="ada", seed=0, backbone="efficientnet_lite0"``); None when there is none.

    How a chapter finds another chapter's run: by what it computed, never by a fixed folder name.
    """
    from ada_utils.files import read_json

    found = []
    for path in Path(folder).glob("*/config.json"):
        header, metrics = read_json(path), path.parent / "metrics.json"
        saved = header.get("config", {})
        if header.get("status") != "finished" or any(saved.get(k) != v for k, v in config.items()):
            continue
        # 03 records the root's name, ada train its path: both name the same folder
        if metrics.is_file() and Path(str(read_json(metrics).get("data_root"))).name == Path(root).name:
            found.append(path.parent)
    return max(found, key=lambda run: (run / "config.json").stat().st_mtime_ns, default=None)


def run_header(cfg: TrainConfig, data: TrainData, rows: np.ndarray, model: DomainHeads) -> dict:
    from ada_utils.project import hardware, library_versions

    return {"config": dataclasses.asdict(cfg), "data_hash": data.fingerprint(with_pairs=cfg.unit.reads_pairs),
            "n_rows": int(len(rows)), "feature_dim": int(data.feats.shape[1]), "head_kind": model.kind,
            "shared": model.shared, "library_versions": library_versions(), "hardware": hardware(),
            "fit": getattr(model, "fit_info", {}), "train_pool": data.source, "status": "running"}


# Everything a run writes into its folder (what ``overwrite`` deletes).
RUN_FILES = ("config.json", "log.jsonl", "checkpoint.safetensors", "checkpoint.prev.safetensors", "head.safetensors",
             "encoder.safetensors", "encoder.json", "validation.jsonl", "best.safetensors", "checksums.json",
             "metrics.json")
PREV = "checkpoint.prev.safetensors"


def prepare_dir(out_dir: Path, header: dict, *, resume: bool, overwrite: bool) -> bool:
    """Check what ``out_dir`` holds; returns True when a finished identical run can be reused (resume)."""
    from ada_utils.files import read_json

    cfg_path = out_dir / "config.json"
    if not cfg_path.is_file():
        return False
    old = read_json(cfg_path)
    if overwrite:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        return False
    if old.get("status") == "failed" and not resume:
        raise FileExistsError(f"{out_dir} holds a failed run ({old.get('error', 'no reason recorded')}): pass "
                              "--overwrite (overwrite=True) to start again with other settings (a lower lr), or "
                              "--resume (resume=True) to continue from its last good checkpoint")
    if not resume:
        state = "a finished" if old.get("status") == "finished" else "an unfinished"
        raise FileExistsError(f"{out_dir} already holds {state} run: pass --overwrite (overwrite=True) to retrain it "
                              "from scratch, --resume (resume=True) to continue it, or choose another --out")
    diff = sorted(k for k, v in header["config"].items()
                  if k not in RESUME_FREE and old.get("config", {}).get(k) != v)
    if diff:
        pairs = ", ".join(f"{k}: checkpoint {old['config'].get(k)!r} vs now {header['config'][k]!r}" for k in diff)
        raise ValueError(f"cannot resume {out_dir}: its checkpoint was made with other parameters ({pairs}); "
                         "use the same parameters, another folder (--out), or --overwrite (overwrite=True)")
    if old.get("data_hash") != header["data_hash"]:
        raise ValueError(f"cannot resume {out_dir}: the training features differ from the checkpoint's (data_hash "
                         f"{old.get('data_hash', '?')[:12]} vs {header['data_hash'][:12]}): the images, the encoder's "
                         "weights file or its preprocessing changed; use the same ones, another folder (--out), or "
                         "--overwrite (overwrite=True)")
    return old.get("status") == "finished"


def read_log(out_dir: Path) -> list[dict]:
    """The records of ``log.jsonl``; a last line cut short by a killed run is dropped (it is rewritten on resume)."""
    path = Path(out_dir) / "log.jsonl"
    lines = [line for line in path.read_text().splitlines() if line] if path.is_file() else []
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({err})") from err
    return records


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, stepper: Step,
                     step: int, scaler: torch.amp.GradScaler | None = None) -> None:
    """Model, optimiser state, NN table/bank, RNG states (and the float16 gradient scaler's state) in one
    safetensors file, written atomically. Rank 0 alone calls it."""
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    scalars: dict = {}
    for pid, state in sd["state"].items():
        for key, val in state.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{key}"] = val.detach().cpu().clone().contiguous()
            else:
                scalars[f"{pid}.{key}"] = val
    tensors.update({"nn_table": stepper.nn_table.clone(), "nn_bank": stepper.bank.clone(),
                    "rng.torch": torch.get_rng_state()})
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"step": step, "param_groups": sd["param_groups"], "opt_scalars": scalars}
    if scaler is not None and scaler.is_enabled():
        meta["grad_scaler"] = {k: float(v) if torch.is_tensor(v) else v for k, v in scaler.state_dict().items()}
    _keep_previous(path)
    need = sum(t.numel() * t.element_size() for t in tensors.values())
    ensure_space(path.parent, need, f"the checkpoint {path.name}")
    save_safetensors(path, tensors, {"json": json.dumps(meta)}, record=True)


def _keep_previous(path: Path) -> None:
    """The last checkpoint becomes ``checkpoint.prev.safetensors`` (a hard link: no copy, no space), with its
    record, before the new one replaces it: a checkpoint damaged later still has an intact predecessor."""
    import os

    if not path.is_file() or recorded_damage(path):
        return
    link = path.with_name(f".{PREV}.link")
    link.unlink(missing_ok=True)
    with space_errors(link):
        os.link(path, link)
    copy_record(path.parent, path.name, PREV)  # first: a kill before the rename leaves the old PREV accepted
    os.replace(link, path.with_name(PREV))


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint file continues from (read from its metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return int(json.loads(fh.metadata()["json"])["step"])


def _was_previous(path: Path) -> bool:
    """Whether ``path`` matches the record of ``checkpoint.prev.safetensors`` (then it becomes ``path``'s record)."""
    if not matches_record_of(path, PREV):
        return False
    copy_record(path.parent, PREV, path.name)
    return True


def check_checkpoint(path: Path) -> None:
    """Refuse a damaged checkpoint before resuming from it, saying what to do: the previous checkpoint when it is
    intact, else ``--overwrite``.

    Raises:
        DamagedFileError: ``path`` is truncated, damaged, or not readable as safetensors.
    """
    from safetensors import SafetensorError

    damage = recorded_damage(path)
    if damage is not None and _was_previous(path):
        damage = None  # the previous checkpoint, moved into place as the refusal below says
    if damage is None:
        try:
            checkpoint_step(path)
            return
        except (SafetensorError, OSError, ValueError, KeyError) as err:
            damage = f"{path}: not a readable checkpoint ({err})"
    prev = path.with_name(PREV)
    try:
        intact = prev.is_file() and recorded_damage(prev) is None
        what = f"the previous checkpoint {prev} (step {checkpoint_step(prev)}) is intact: `mv {prev} {path}`, then " \
            "resume again" if intact else "no intact earlier checkpoint is kept"
    except (SafetensorError, OSError, ValueError, KeyError):
        what = "no intact earlier checkpoint is kept"
    raise DamagedFileError(f"{damage}; {what}, or pass --overwrite (overwrite=True) to train from the start")


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, stepper: Step,
                    scaler: torch.amp.GradScaler | None = None) -> int:
    """Restore what ``save_checkpoint`` wrote (every rank reads the same file); returns the step to continue from."""
    from safetensors import safe_open

    check_checkpoint(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["json"])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for key, val in meta["opt_scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    stepper.nn_table.copy_(tensors["nn_table"])
    stepper.bank.copy_(tensors["nn_bank"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    if scaler is not None and scaler.is_enabled() and "grad_scaler" in meta:
        scaler.load_state_dict(meta["grad_scaler"])
    return int(meta["step"])


def load_head(run_dir: str | Path) -> DomainHeads:
    """Rebuild the head(s) of a finished run from ``config.json`` + ``head.safetensors`` (CPU, eval mode)."""
    from ada_utils.files import read_json

    run_dir = Path(run_dir)
    header = read_json(run_dir / "config.json")
    if header.get("status") != "finished" or not (run_dir / "head.safetensors").is_file():
        raise FileNotFoundError(f"{run_dir}: no finished run (config.json status {header.get('status')!r}); "
                                "train it first (notebooks/03_train.ipynb or `ada train`)")
    damage = recorded_damage(run_dir / "head.safetensors")
    if damage:
        raise DamagedFileError(f"{damage}: train the run again with --overwrite (overwrite=True)")
    model = DomainHeads(header["head_kind"], header["feature_dim"], shared=header["shared"])
    model.load_state_dict(load_file(str(run_dir / "head.safetensors")))
    return model.eval()
