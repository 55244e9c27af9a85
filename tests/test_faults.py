"""Faults of shared machines, produced for real: two processes on one cache, a full disk (a small tmpfs where this
user may mount one, else a file-size limit), truncated and corrupted files, SIGTERM, symlinks out of the root,
NaN weights. Each asserts the exit code or error, its one-line message naming the culprit, and that no finished
work is lost or partial work taken for finished."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ada_utils.cli import main
from ada_utils.encoders import embed_images, load_features
from ada_utils.files import DamagedFileError, NoSpaceError, locked
from ada_utils.train import train
from test_embed import TinyEncoder
from test_train import _cfg, _data

REPO = Path(__file__).resolve().parents[1]


def _images(tiny_root: Path, folder: Path, n: int = 24) -> Path:
    """``n`` of the tiny benchmark's images copied into ``folder``."""
    folder.mkdir(parents=True)
    for src in sorted((tiny_root / "dataset").rglob("*.jpg"))[:n]:
        shutil.copy(src, folder / f"{len(list(folder.iterdir())):03d}.jpg")
    return folder


def _ada_process(*argv: str, stderr: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ada_utils", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=open(stderr, "w"), text=True)  # noqa: SIM115


def _wait_for(predicate, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.1)


# ----------------------------------------------------------------------------- two processes, one cache
def test_two_processes_on_one_cache_both_finish_and_one_reuses(tiny_root, tmp_path):
    images, cache = _images(tiny_root, tmp_path / "imgs"), tmp_path / "cache"
    logs = [tmp_path / "a.err", tmp_path / "b.err"]
    with locked(cache):  # a third writer holds the cache: both wait, then one embeds and the other reuses
        procs = [_ada_process("embed", str(images), "--cache", str(cache), stderr=log) for log in logs]
        _wait_for(lambda: all("waiting for it" in log.read_text() for log in logs))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    errs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("reusing the features the other process finished" in e for e in errs) == 1, errs
    assert outs[0] == outs[1] and "24 x 1280 features" in outs[0]
    assert not (cache / "chunks").exists() and not list(cache.glob(".*.tmp"))
    assert np.isfinite(load_features(cache).feats).all()


# ----------------------------------------------------------------------------- a full disk
def test_a_killed_writers_temporary_chunk_does_not_stop_the_merge(tmp_path, tiny_root):
    images = sorted((tiny_root / "dataset").rglob("*.jpg"))[:40]
    encoder, cache = TinyEncoder(), tmp_path / "cache"
    (cache / "chunks").mkdir(parents=True)
    (cache / "chunks" / ".000001.npy.x1y2z3.tmp").write_bytes(b"half a chunk")  # what SIGKILL mid-write leaves
    feats = embed_images(encoder, images, cache=cache, chunk_size=32, progress=False)
    assert feats.feats.shape[0] == 40 and (cache / "manifest.json").is_file() and not (cache / "chunks").exists()
    assert load_features(cache).feats.shape[0] == 40


def test_a_file_size_limit_names_the_folder_and_keeps_what_was_finished(tmp_path, tiny_root):
    images = sorted((tiny_root / "dataset").rglob("*.jpg"))[:40]
    encoder, cache = TinyEncoder(dim=1024), tmp_path / "cache"
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, old_limit[1]))  # a 32-row chunk fits, the merge does not
    try:
        with pytest.raises(NoSpaceError, match=rf"{cache}: cannot write feats.npy: File too large .* free\)"):
            embed_images(encoder, images, cache=cache, chunk_size=32, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert not (cache / "manifest.json").exists() and not list(cache.glob(".feats.npy.*"))  # nothing partial left
    assert len(list((cache / "chunks").glob("*.npy"))) == 2  # the finished chunks are kept ...
    encoder.images = 0
    again = embed_images(encoder, images, cache=cache, chunk_size=32, progress=False)
    assert encoder.images == 0 and again.feats.shape == (40, 1024)  # ... and the re-run only merges them


def test_a_file_size_limit_in_training_names_the_log_and_the_run_resumes(tmp_path):
    data, cfg = _data(), _cfg(method="ada", epochs=40, checkpoint_every=10**9)
    run = tmp_path / "run"
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8000, old_limit[1]))  # config.json fits, the log outgrows it
    try:
        with pytest.raises(NoSpaceError, match=rf"{run}: cannot write log.jsonl: File too large"):
            train(cfg, data, run, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    resumed = train(cfg, data, run, resume=True, progress=False)
    full = train(cfg, data, tmp_path / "full", progress=False)
    assert torch.equal(resumed.model.state_dict()["real.linear.weight"], full.model.state_dict()["real.linear.weight"])


def _small_disk(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_is_found_before_the_merge(tmp_path, tiny_root, capsys):
    disk = tmp_path / "disk"
    if not _small_disk(disk, "1m"):
        pytest.skip("no tmpfs mount for this user (the file-size limit test covers the write path)")
    try:
        images = _images(tiny_root, tmp_path / "imgs", n=8)
        code = main(["embed", str(images), "--cache", str(disk / "cache")])
        err = capsys.readouterr().err
        assert code == 2 and f"{disk / 'cache'}: the merged feature cache (8 x 1280 float32) needs 40.0 KiB" in err
        assert "free there" in err and "Traceback" not in err
        assert not (disk / "cache" / "manifest.json").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ----------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_a_damaged_cache_is_named_and_embedded_again(tmp_path, tiny_root, capsys, damage):
    images = sorted((tiny_root / "dataset").rglob("*.jpg"))[:20]
    encoder, cache = TinyEncoder(), tmp_path / "cache"
    first = np.array(embed_images(encoder, images, cache=cache, progress=False).feats)
    feats = cache / "feats.npy"
    data = bytearray(feats.read_bytes())
    if damage == "truncate":
        feats.write_bytes(data[:len(data) // 2])
    else:  # same size, other numbers: only the checksum can tell
        data[-40:] = bytes(40)
        feats.write_bytes(data)
    with pytest.raises(DamagedFileError, match=rf"{feats}: .*delete {cache}"):
        load_features(cache)
    capsys.readouterr()
    again = embed_images(encoder, images, cache=cache, progress=False)
    assert f"{feats}:" in capsys.readouterr().err
    assert np.array_equal(np.array(again.feats), first)


def test_a_damaged_checkpoint_names_the_previous_intact_one(tmp_path):
    data, cfg = _data(), _cfg(method="ada")
    full = train(cfg, data, tmp_path / "full", progress=False)
    run = tmp_path / "run"
    assert train(cfg, data, run, progress=False, stop_at=7) is None  # checkpoints at steps 3 and 6
    ckpt = run / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(DamagedFileError, match=r"checkpoint.prev.safetensors \(step 3\) is intact: `mv .*--overwrite"):
        train(cfg, data, run, resume=True, progress=False)
    (run / "checkpoint.prev.safetensors").replace(ckpt)
    resumed = train(cfg, data, run, resume=True, progress=False)
    for key, val in full.model.state_dict().items():
        assert torch.equal(val, resumed.model.state_dict()[key]), key


_KILLED_MID_WRITE = """
import os, signal, sys
from ada_utils import files
files.write_recorded(sys.argv[1], b"first state " * 100)
replace = os.replace
os.replace = lambda src, dst: (os.kill(os.getpid(), signal.SIGKILL) if str(dst) == sys.argv[1]  # after the
                               else replace(src, dst))  # record, before the rename of the file itself
files.write_recorded(sys.argv[1], b"second state " * 100)
"""


def test_a_kill_between_record_and_rename_leaves_the_file_trusted(tmp_path):
    from ada_utils.files import recorded_damage, write_recorded

    path = tmp_path / "head.safetensors"
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(path)], cwd=REPO, capture_output=True)
    assert proc.returncode == -signal.SIGKILL and path.read_bytes() == b"first state " * 100
    assert json.loads((tmp_path / "checksums.json").read_text())["head.safetensors"]["bytes"] == 1300  # recorded
    assert recorded_damage(path) is None  # the old state is what the record still accepts
    write_recorded(path, b"third " * 10)
    path.write_bytes(b"first state " * 100)  # a state older than the last two writes is damage
    assert "1200 bytes, but 60 were written" in recorded_damage(path)


def test_a_damaged_head_is_named(tmp_path):
    from ada_utils.train.run_folder import load_head

    run = tmp_path / "run"
    train(_cfg(method="ada"), _data(), run, progress=False)
    head = run / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-8:] = bytes(8)
    head.write_bytes(data)
    with pytest.raises(DamagedFileError, match=rf"{head}: its content differs .*--overwrite"):
        load_head(run)


# ----------------------------------------------------------------------------- signals
def test_sigterm_in_training_saves_the_last_step_and_resumes_to_identical_weights(tmp_path, monkeypatch):
    """A real SIGTERM, sent by the process to itself right after step 5 is taken (so the test never races the run)."""
    from ada_utils.train import loop
    from ada_utils.train.run_folder import checkpoint_step

    data, cfg = _data(), _cfg(method="ada", epochs=30, checkpoint_every=10_000)  # no scheduled checkpoint
    full = train(cfg, data, tmp_path / "full", progress=False)
    run, update = tmp_path / "run", loop._Session.update
    _signal_at(monkeypatch, 4)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        train(cfg, data, run, progress=False)
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are restored
    step = checkpoint_step(run / "checkpoint.safetensors")
    assert step == 5 < full.steps and len((run / "log.jsonl").read_text().splitlines()) == step
    monkeypatch.setattr(loop._Session, "update", update)
    resumed = train(cfg, data, run, resume=True, progress=False)
    for key, val in full.model.state_dict().items():
        assert torch.equal(val, resumed.model.state_dict()[key]), key


def _signal_at(monkeypatch, step: int, sig: int = signal.SIGTERM) -> None:
    """The process signals itself right after training step ``step`` is taken."""
    from ada_utils.train import loop

    update = loop._Session.update

    def update_then_signal(self, at: int, *args, **kwargs) -> dict:
        rec = update(self, at, *args, **kwargs)
        if at == step:
            os.kill(os.getpid(), sig)
        return rec

    monkeypatch.setattr(loop._Session, "update", update_then_signal)


def test_a_signal_with_the_last_step_stops_after_the_run_is_saved(tmp_path, monkeypatch):
    data, cfg = _data(), _cfg(method="ada", epochs=2)
    steps = train(cfg, data, tmp_path / "full", progress=False).steps
    _signal_at(monkeypatch, steps - 1)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        train(cfg, data, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["status"] == "finished"
    assert (tmp_path / "run" / "head.safetensors").read_bytes() == (tmp_path / "full" / "head.safetensors").read_bytes()


_TRAIN_CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
from test_train import _cfg, _data
from ada_utils.train import train
try:
    train(_cfg(method="ada", epochs=100_000, checkpoint_every=10**9, num_workers=2), _data(), sys.argv[1],
          progress=False)
except KeyboardInterrupt as stop:
    print("stopped by", stop, file=sys.stderr)
    sys.exit(143)
"""


def test_sigterm_to_the_whole_job_with_dataloader_workers_still_checkpoints(tmp_path):
    """A scheduler signals every process of the job: the DataLoader workers ignore it, the trainer checkpoints."""
    run, log = tmp_path / "run", tmp_path / "err"
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_CHILD, str(run), str(REPO / "tests")], cwd=REPO,
                            stderr=open(log, "w"), start_new_session=True)  # noqa: SIM115
    try:
        _wait_for(lambda: (run / "log.jsonl").is_file() and len((run / "log.jsonl").read_text().splitlines()) >= 5)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    from ada_utils.train.run_folder import checkpoint_step

    err = log.read_text()
    assert proc.returncode == 143 and "stopped by SIGTERM" in err and "Traceback" not in err, err
    assert checkpoint_step(run / "checkpoint.safetensors") == len((run / "log.jsonl").read_text().splitlines())


def test_a_busy_lock_is_refused_when_asked_instead_of_waited_for(tmp_path):
    """What rank 0 does under torchrun with a folder another job trains in (its other ranks wait in a collective)."""
    with locked(tmp_path / "r"), pytest.raises(FileExistsError, match="another process is training"):
        with locked(tmp_path / "r", refuse=f"{tmp_path / 'r'}: another process is training in this folder"):
            pass


def test_sigterm_stops_a_command_with_the_resume_line(tiny_root, tmp_path):
    """A real ``ada embed`` process sent SIGTERM mid-run: exit 143, the resume line, its finished chunks kept."""
    images = _images(tiny_root, tmp_path / "imgs", n=400)
    cache, log = tmp_path / "cache", tmp_path / "err"
    proc = _ada_process("embed", str(images), "--cache", str(cache), "--batch-size", "4", stderr=log)
    _wait_for(lambda: len(list((cache / "chunks").glob("*.npy"))) >= 1, timeout=240)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    err = log.read_text()
    assert proc.returncode == 143 and "ada embed: stopped by SIGTERM; what was finished is kept" in err, err
    assert "Traceback" not in err and not (cache / "manifest.json").exists()
    assert list((cache / "chunks").glob("*.npy"))


# ----------------------------------------------------------------------------- paths and numbers
def _root_with_link(tiny_root: Path, tmp_path: Path, target: Path) -> tuple[Path, Path, str]:
    """A copy of the tiny root whose first exemplar of its first test case is a symlink to ``target``."""
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    name = sorted(p.stem for p in (root / "dataset" / "json").glob("test_*.json"))[0]
    entry = json.loads((root / "dataset" / "json" / f"{name}.json").read_text())[0]
    link = root / entry["exemplar"][0]
    link.unlink()
    link.symlink_to(target)
    return root, link, f"dataset/json/{name}.json"


@pytest.mark.parametrize("target", ["outside", "/etc/passwd"])
def test_a_symlink_out_of_the_root_is_refused_naming_link_and_target(tiny_root, tmp_path, capsys, monkeypatch,
                                                                     target):
    outside = tmp_path / "outside.jpg"
    shutil.copy(next((tiny_root / "dataset").rglob("*.jpg")), outside)
    root, link, case = _root_with_link(tiny_root, tmp_path, outside if target == "outside" else Path(target))
    code = main(["data", "check", "--data-root", str(root), case])
    err = capsys.readouterr().err
    real = outside.resolve() if target == "outside" else Path(target).resolve()
    assert code == 2 and f"{link} -> {real}" in err and "ADA_FOLLOW_SYMLINKS=1" in err and "Traceback" not in err
    monkeypatch.setenv("ADA_FOLLOW_SYMLINKS", "1")
    if target == "outside":  # opted in: a root built of links is read
        assert main(["data", "check", "--data-root", str(root), case]) == 0


def test_a_distractor_linked_out_of_the_root_is_refused(tiny_root, tmp_path):
    from ada_utils.data.abc import LinkOutsideRootError, distractor_dir, list_distractors

    root, outside = tmp_path / "root", tmp_path / "outside.jpg"
    shutil.copytree(tiny_root, root)
    link = list_distractors(root)[0]
    shutil.copy(link, outside)
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(LinkOutsideRootError, match=f"{link} -> {outside.resolve()}"):
        list_distractors(root, n=3)
    assert distractor_dir(root).is_dir()


def test_nan_weights_are_named_and_never_taken_for_undecodable_images(tmp_path, tiny_root):
    from safetensors.torch import save_file

    from ada_utils.encoders import CheckpointError, load_encoder
    from ada_utils.encoders.embed import NonFiniteFeaturesError

    encoder = load_encoder("efficientnet_lite0", device="cpu", image_size=128)
    state = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    state["conv_stem.weight"][0, 0, 0, 0] = float("nan")
    weights = tmp_path / "nan.safetensors"
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=rf"{weights}: 1 tensor\(s\) hold NaN/Inf \(conv_stem.weight\)"):
        load_encoder("efficientnet_lite0", weights, device="cpu", image_size=128)
    tiny = TinyEncoder()
    with torch.no_grad():
        tiny.net[-1].bias.fill_(float("inf"))  # finite images, infinite features: the encoder's fault
    images = sorted((tiny_root / "dataset").rglob("*.jpg"))[:4]
    for on_error in ("raise", "skip"):
        with pytest.raises(NonFiniteFeaturesError, match=rf"'tiny' \(weights random\) .*first: {images[0]}"):
            embed_images(tiny, images, cache=tmp_path / on_error, on_error=on_error, progress=False)


# ----------------------------------------------------------------------------- run folders by configuration
def test_run_folders_follow_what_the_run_computes(tmp_path):
    """Another setting or other features (another backbone, weights or data root) get a folder of their own: no
    collision, no ``overwrite``; the same configuration finds its finished run again and reuses it."""
    import dataclasses

    from ada_utils.train.run_folder import find_run, run_name

    data, cfg = _data(), _cfg(method="ada")
    other_features, other_setting = _data(seed=1), _cfg(method="ada", lam=3.0)
    names = [run_name(cfg, data), run_name(cfg, other_features), run_name(other_setting, data)]
    assert len(set(names)) == 3 and all(n.startswith("ada-seed0-") for n in names)
    assert run_name(dataclasses.replace(cfg, checkpoint_every=7), data) == names[0]  # resume-free knobs share it
    first = train(cfg, data, tmp_path / names[0], progress=False)
    train(cfg, other_features, tmp_path / names[1], progress=False)
    train(other_setting, data, tmp_path / names[2], progress=False)
    again = train(cfg, data, tmp_path / names[0], resume=True, progress=False)
    assert again.seconds == 0.0 and torch.equal(again.model.state_dict()["real.linear.weight"],
                                                first.model.state_dict()["real.linear.weight"])
    # 03 records the root's name, `ada train` its path as given: find_run reads both as the same folder
    (tmp_path / names[0] / "metrics.json").write_text(json.dumps({"data_root": "some/where/tiny"}))
    (tmp_path / names[2] / "metrics.json").write_text(json.dumps({"data_root": "tiny"}))
    assert find_run(tmp_path, root=Path("elsewhere/tiny"), method="ada") == tmp_path / names[2]  # the newest
    assert find_run(tmp_path, root=Path("tiny"), method="ada", lam=1.0) == tmp_path / names[0]
    assert find_run(tmp_path, root=Path("small"), method="ada") is None


def test_a_damaged_calibrator_is_named(tmp_path):
    from ada_utils.eval.calibrate import Calibrator, load_calibrator, save_calibrator

    path = save_calibrator(tmp_path / "cal.pth", Calibrator(12.5, -3.0), {"dim": 8})
    assert load_calibrator(path, dim=8)[0].inv_tau.item() == 12.5
    data = bytearray(path.read_bytes())
    data[-12:] = bytes(12)
    path.write_bytes(data)
    with pytest.raises(DamagedFileError, match=rf"{path}: its content differs .*--calibrate-on"):
        load_calibrator(path, dim=8)


def test_the_tools_files_are_readable_by_colleagues_and_help_needs_no_torch(tmp_path, tiny_root):
    """A cache shared through ADA_CACHE: its JSON files get the permissions of its arrays (the user's umask);
    ``ada --help`` imports neither torch nor timm (the CLI promises a fast answer)."""
    images = sorted((tiny_root / "dataset").rglob("*.jpg"))[:4]
    cache = embed_images(TinyEncoder(), images, cache=tmp_path / "cache", progress=False).path
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in cache.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # 0644 under the usual umask 022, as any file the user makes
    probe = ("import sys, contextlib, io\nfrom ada_utils.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):"
             "\n    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- the smaller items
def _root_copy(tiny_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    return root, sorted((root / "dataset" / "json").glob("test_*.json"))[0]


def test_duplicate_model_ids_and_models_without_exemplars_are_named(tiny_root, tmp_path, capsys):
    root, case = _root_copy(tiny_root, tmp_path)
    entries = json.loads(case.read_text())
    rel = str(case.relative_to(root))
    case.write_text(json.dumps(entries + [entries[0]]))
    assert main(["data", "check", "--data-root", str(root), rel]) == 2
    err = capsys.readouterr().err
    assert f"entries 0 and {len(entries)} share the model id class_id={entries[0]['class_id']!r}" in err
    queries = sum(len(v) for v in entries[0]["synth"].values())
    case.write_text(json.dumps([{**entries[0], "exemplar": []}] + entries[1:]))
    assert main(["data", "check", "--data-root", str(root), rel, "--json"]) == 0
    out, err = capsys.readouterr()
    assert sum(r["without_exemplars"] for r in json.loads(out)) == queries
    assert "belong to models whose entry lists no exemplar; the evaluation leaves them out" in err


def test_a_missing_data_root_is_named_before_anything_loads(tmp_path, capsys):
    code = main(["train", "--data-root", str(tmp_path / "data" / "small"), "--method", "whiten"])
    err = capsys.readouterr().err
    assert code == 2 and f"data root {tmp_path / 'data' / 'small'}: no such folder" in err and "json" in err


@pytest.mark.parametrize("side", [6000, 6001])
def test_a_huge_jpeg_is_decoded_at_a_reduced_scale(tmp_path, capsys, side):
    from PIL import Image

    from ada_utils.data.images import LARGE_PIXELS, load_image

    path, half = tmp_path / "huge.jpg", -(-side // 2)
    Image.new("RGB", (side, side), (90, 140, 200)).save(path, quality=80)
    assert side * side > LARGE_PIXELS
    img = load_image(path)
    assert img.size == (half, half) and img.getpixel((10, 10))[2] > 180
    assert f"{path}: {side}x{side} px decoded at {half}x{half} (JPEG scaling) to bound memory" in capsys.readouterr().err
