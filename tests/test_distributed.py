"""torchrun on the CPU (gloo, 2 processes): sharded embedding, gathered negatives, rank-0 writes, kill and resume.

The 2-process tests start ``python -m torch.distributed.run --nproc_per_node=2`` on a small worker script written
to ``tmp_path``; every launch has a timeout, so a rank left waiting in a collective fails the test instead of
hanging it. GPU code paths (NCCL, ``cuda:LOCAL_RANK``, autocast) are checked here only through device selection.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ada_utils.train import TrainConfig, TrainData, train
from ada_utils import distributed

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 300  # seconds per torchrun launch: imports alone take long on a busy 2-core machine

WORKER = textwrap.dedent('''
    """One rank of a test job: python worker.py JOB_JSON (under torchrun)."""
    import json
    import os
    import signal
    import sys
    import time
    from pathlib import Path

    import numpy as np
    import torch
    from safetensors.torch import save_file

    job = json.loads(sys.argv[1])
    rank = int(os.environ["RANK"])
    result = {"rank": rank, "world": int(os.environ["WORLD_SIZE"])}


    def state(model):
        return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


    if job["mode"] == "embed":
        from ada_utils.cli import main
        from ada_utils.encoders import embed_images, load_encoder

        paths = sorted(Path(job["images"]).glob("*.png"))
        assert main(["embed", job["images"], "--backbone", "efficientnet_lite0", "--image-size", "32",
                     "--cache", job["cli_cache"], "--device", "auto", "--batch-size", "2"]) == 0
        torch.manual_seed(0)
        encoder = load_encoder("efficientnet_lite0", pretrained=False, image_size=32, device="auto")
        calls = []
        encoder.register_forward_hook(lambda module, inputs, output: calls.append(len(torch.unique(inputs[0], dim=0))))
        feats = embed_images(encoder, paths, cache=job["cache"], chunk_size=2, batch_size=2, progress=False)
        result.update(images=sum(calls), device=str(next(encoder.parameters()).device),
                      feats=np.asarray(feats.feats).tolist())
    else:
        from ada_utils.train import TrainConfig, TrainData, train
        from ada_utils import distributed
        from ada_utils.train.step import Step

        arrays = np.load(job["data"])
        data = TrainData(arrays["feats"], arrays["domain"], arrays["views"], [f"id{i}" for i in range(len(arrays["feats"]))])
        cfg = TrainConfig(**job["cfg"])
        if job.get("kill_at") is not None:  # kill -9 of rank 0 when it plans step kill_at
            plan = Step.batch

            def batch(self, step, w):
                if step == job["kill_at"] and self.rank == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
                return plan(self, step, w)

            Step.batch = batch
        res = train(cfg, data, job["out"], resume=job.get("resume", False), progress=False)
        result.update(steps=res.steps, losses=[r["loss"] for r in res.log], device=str(distributed.setup(cfg.device).device))
        save_file(state(res.model), str(Path(job["out"]) / f"returned-rank{rank}.safetensors"))
        if job.get("rerun_finished"):  # the run is finished now: a re-run must end at once on every rank
            start = time.perf_counter()
            again = train(cfg, data, job["out"], resume=True, progress=False)
            result["rerun"] = {"steps": again.steps, "seconds": time.perf_counter() - start}
            try:
                train(cfg, data, job["out"], progress=False)
            except FileExistsError as err:
                result["refused"] = str(err)
            distributed.barrier()
    Path(job["result"].format(rank=rank)).write_text(json.dumps(result))
''')


@pytest.fixture()
def one_thread():
    """One intra-op thread: on a shared 2-core machine, small convolutions run many times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(tmp: Path, job: dict, *, expect_ok: bool = True) -> tuple[list[dict], subprocess.CompletedProcess]:
    """Run ``job`` on 2 CPU processes; returns the per-rank result dicts (absent ranks left out) and the process."""
    script = tmp / "worker.py"
    script.write_text(WORKER)
    tag = f"{job['mode']}-{time.monotonic_ns()}"
    job = {**job, "result": str(tmp / f"{tag}-rank{{rank}}.json")}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(script), json.dumps(job)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = [json.loads(p.read_text()) for r in range(2) if (p := tmp / f"{tag}-rank{r}.json").is_file()]
    return results, proc


# ----------------------------------------------------------------------------- one process: device, errors
def test_device_follows_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert distributed.select_device("auto") == torch.device("cuda", 2)
    assert distributed.select_device("cuda") == torch.device("cuda", 2) and current == [2, 2]
    assert distributed.select_device("cuda:1") == torch.device("cuda", 1) and current[-1] == 1
    assert distributed.select_device("cpu") == torch.device("cpu") and len(current) == 3
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(ValueError, match="needs GPU 5, but 4 are visible"):
        distributed.select_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.select_device("auto") == torch.device("cpu")  # no GPU: every rank on the CPU
    with pytest.raises(ValueError, match="CUDA is not available"):
        distributed.select_device("cuda")


def test_one_process_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from ada_utils.encoders import load_encoder

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = distributed.setup("auto" if not torch.cuda.is_available() else "cpu")
    assert (ctx.rank, ctx.world, ctx.local_rank, ctx.is_main) == (0, 1, 0, True)
    assert not torch.distributed.is_initialized()
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather(x) is x and distributed.all_gather_with_grad(x, split=True)[0] is x
    assert distributed.on_main(lambda a: a + 1, 1) == 2
    with distributed.main_first():
        pass
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed.rank_and_world() == (1, 3) and not distributed.is_main()
    if not torch.cuda.is_available():
        assert distributed.select_device("auto") == torch.device("cpu")
        torch.manual_seed(0)
        assert next(load_encoder("efficientnet_lite0", pretrained=False, image_size=32).parameters()).device.type \
            == "cpu"


def test_cli_keeps_tracebacks_of_real_failures(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    import argparse

    from ada_utils import cli

    def run(err: BaseException) -> int:
        parser = argparse.ArgumentParser()
        parser.set_defaults(func=lambda args: (_ for _ in ()).throw(err), command="train")
        monkeypatch.setattr(cli, "build_parser", lambda command=None: parser)
        return cli.main([])

    assert run(ValueError("lam=-1 must be >= 0")) == 2
    assert capsys.readouterr().err.strip() == "ada train: error: lam=-1 must be >= 0"
    assert run(FileExistsError("runs/x already holds a finished run")) == 2
    from ada_utils.train import TrainingDivergedError

    assert run(TrainingDivergedError("training diverged at step 5")) == 2
    for err in (RuntimeError("CUDA error: an illegal memory access was encountered"),
                torch.distributed.DistBackendError("NCCL error in: ProcessGroupNCCL.cpp"),
                torch.cuda.OutOfMemoryError("CUDA out of memory"), KeyError("bug")):
        with pytest.raises(type(err)):
            run(err)


# ----------------------------------------------------------------------------- 2 processes (torchrun, gloo)
def _images(folder: Path, n: int = 7) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (36 + i, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return sorted(folder.glob("*.png"))


@pytest.mark.slow
def test_sharded_embedding_equals_one_process(tmp_path: Path, one_thread) -> None:
    from ada_utils.encoders import embed_images, load_encoder

    paths = _images(tmp_path / "img")
    job = {"mode": "embed", "images": str(tmp_path / "img"), "cache": str(tmp_path / "c2"),
           "cli_cache": str(tmp_path / "cli2")}
    results, _ = _torchrun(tmp_path, job)
    assert [r["rank"] for r in results] == [0, 1] and {r["device"] for r in results} == {"cpu"}
    assert [r["images"] for r in results] == [4, 3]  # chunks 0, 2 (4 images) and 1, 3 (2 + 1 padded images)
    torch.manual_seed(0)
    one = embed_images(load_encoder("efficientnet_lite0", pretrained=False, image_size=32), paths,
                       cache=tmp_path / "c1", progress=False)
    # Float32 sums in another batch composition and thread count: equal to 1e-5 relative (features reach 1.3)
    np.testing.assert_allclose(np.asarray(results[0]["feats"]), one.feats, rtol=1e-5, atol=1e-5)
    assert results[0]["feats"] == results[1]["feats"]
    cli_one = embed_images(load_encoder("efficientnet_lite0", image_size=32), paths, cache=tmp_path / "cli1",
                           progress=False)
    from ada_utils.encoders import load_features

    cli_two = load_features(tmp_path / "cli2")
    np.testing.assert_allclose(cli_two.feats, cli_one.feats, rtol=1e-5, atol=1e-5)
    assert cli_two.ids == cli_one.ids and not (tmp_path / "cli2" / "chunks").exists()


@pytest.mark.slow
def test_ada_train_under_torchrun_writes_and_evaluates_on_rank_0_only(tiny_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "ada_utils", "train", "--data-root", str(tiny_root), "--method", "whiten", "--image-size", "32",
           "--n-views", "0", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    metrics = json.loads((out / "metrics.json").read_text())["cells"]
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone reports ...
    assert sum(" R@5 " in line for line in proc.stdout.splitlines()) == len(metrics) > 0  # ... and evaluates
    assert json.loads((out / "config.json").read_text())["status"] == "finished"


def _features(n: int = 96, d: int = 8, seed: int = 0) -> TrainData:
    """Random features with a concept shared by a real image and a few synthetic ones (tests/test_train.py)."""
    rng = np.random.default_rng(seed)
    owner = np.arange(n) % (n // 4)
    domain = (np.arange(n) >= n // 4).astype(np.int64)
    feats = (rng.normal(size=(n // 4, d))[owner] + 0.3 * rng.normal(size=(n, d))
             + np.where(domain[:, None] == 1, 0.8 * rng.normal(size=d), 0.0)).astype(np.float32)
    views = (feats[None] + 0.2 * rng.normal(size=(2, n, d))).astype(np.float32)
    return TrainData(feats, domain, views, [f"id{i}" for i in range(n)])


# Alignment over views and cross-domain neighbours with gathered negatives, Infomax on the gathered batch
# (gather=True), plain SGD (so that a gradient scaled by the number of processes would show).
RUN = {"method": "ada", "solver": "gradient", "alignment": "both", "schedule": "joint", "gather": True,
       "optimizer": "sgd", "lr": 0.05, "epochs": 3, "batch_size": 32, "checkpoint_every": 2, "nn_refresh": 4,
       "form": "coding_rate", "eps": 0.5, "lam": 0.5, "init": "identity", "heads": "shared",
       "cov_mode": "per_domain"}


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted 2-process run, and one killed (kill -9 of rank 0 at step 7) then resumed and re-run."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = _features()
    np.savez(tmp / "data.npz", feats=data.feats, domain=data.domain, views=data.views)
    base = {"mode": "train", "data": str(tmp / "data.npz"), "cfg": RUN}
    full, _ = _torchrun(tmp, {**base, "out": str(tmp / "full")})
    killed, proc = _torchrun(tmp, {**base, "out": str(tmp / "killed"), "kill_at": 7}, expect_ok=False)
    assert proc.returncode != 0 and not killed, proc.stderr[-3000:]
    header = json.loads((tmp / "killed" / "config.json").read_text())
    from safetensors import safe_open

    with safe_open(str(tmp / "killed" / "checkpoint.safetensors"), framework="pt") as fh:
        ckpt_step = json.loads(fh.metadata()["json"])["step"]
    resumed, _ = _torchrun(tmp, {**base, "out": str(tmp / "killed"), "resume": True, "rerun_finished": True})
    return {"tmp": tmp, "data": data, "full": full, "resumed": resumed, "killed_status": header["status"],
            "killed_step": ckpt_step}


@pytest.mark.slow
def test_two_ranks_gather_negatives_like_one_process(two_rank_runs: dict, tmp_path: Path, one_thread) -> None:
    full = two_rank_runs["full"]
    assert [r["rank"] for r in full] == [0, 1] and full[0]["steps"] == 9
    assert full[0]["losses"] == full[1]["losses"]  # the logged loss is the mean over ranks
    one = train(TrainConfig(**RUN), two_rank_runs["data"], tmp_path / "one", progress=False)
    assert abs(full[0]["losses"][0] - one.log[0]["loss"]) < 1e-5  # same global batch, same negatives
    np.testing.assert_allclose(full[0]["losses"], [r["loss"] for r in one.log], atol=1e-4)
    two = load_file(str(two_rank_runs["tmp"] / "full" / "head.safetensors"))
    for key, value in one.model.state_dict().items():  # DDP's mean of the per-rank gradients = the 1-process one
        torch.testing.assert_close(two[key], value, atol=1e-4, rtol=1e-4)
    config = json.loads((two_rank_runs["tmp"] / "full" / "config.json").read_text())
    assert config["status"] == "finished" and config["world_size"] == 2


@pytest.mark.slow
def test_killed_two_rank_run_resumes_to_the_same_weights(two_rank_runs: dict) -> None:
    tmp = two_rank_runs["tmp"]
    assert two_rank_runs["killed_status"] == "running" and two_rank_runs["killed_step"] == 6
    resumed = two_rank_runs["resumed"]
    assert [r["rank"] for r in resumed] == [0, 1] and resumed[0]["steps"] == 9
    full = load_file(str(tmp / "full" / "head.safetensors"))
    for path in ("killed/head.safetensors", "killed/returned-rank0.safetensors", "killed/returned-rank1.safetensors",
                 "full/returned-rank1.safetensors"):
        other = load_file(str(tmp / path))
        assert all(torch.equal(full[k], other[k]) for k in full), path
    logs = [[json.loads(line)["loss"] for line in (tmp / run / "log.jsonl").read_text().splitlines()]
            for run in ("full", "killed")]
    assert logs[0] == logs[1] and len(logs[0]) == 9


@pytest.mark.slow
def test_finished_run_ends_at_once_on_every_rank(two_rank_runs: dict) -> None:
    resumed = two_rank_runs["resumed"]
    for r in resumed:  # both ranks came back (no rank waiting in DDP), with the same verdicts
        assert r["rerun"]["steps"] == 0 and r["rerun"]["seconds"] < 30, r
        assert "already holds a finished run" in r["refused"], r


# ----------------------------------------------------------------------------- one process: image path resume
def _tiny_abc(root: Path, seed: int = 0) -> Path:
    """A 3-model AbC-layout training split (the pattern of tests/test_train.py)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    entries = []
    for m in range(3):
        ex = f"dataset/exemplar/objects/images/n0{m}/0.jpg"
        synth = [f"dataset/synth/objects/scene/n0{m}/samples/{j:05d}.jpg" for j in range(3)]
        for path in (ex, *synth):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / path)
        entries.append({"exemplar": [ex], "synth": {"scene": synth}, "class_id": f"n0{m}", "category": None})
    (root / "dataset" / "json").mkdir(parents=True, exist_ok=True)
    (root / "dataset" / "json" / "train_all.json").write_text(json.dumps(entries))
    return root


def _fine_tuning(tmp_path: Path):
    """A fresh-process encoder factory, the unlabelled pool of a tiny AbC root and a last-block fine-tuning config."""
    from ada_utils.encoders import load_encoder
    from ada_utils.train import training_data

    def encoder():
        torch.manual_seed(0)
        return load_encoder("efficientnet_lite0", pretrained=False, image_size=32)

    # The image path draws its views on the fly (ImageSource): cached views are not needed.
    data = training_data(encoder(), _tiny_abc(tmp_path / "abc"), n_views=0, progress=False)
    cfg = TrainConfig(method="ada", solver="gradient", alignment="both", schedule="joint", finetune="last_k",
                      k_blocks=1, batch_size=6, epochs=2, image_size=32, form="coding_rate", eps=0.5, lam=0.5,
                      init="identity", heads="shared", cov_mode="pooled", checkpoint_every=2, nn_refresh=3,
                      lr=1e-2)
    return encoder, data, cfg


def test_fine_tuning_run_resumes_bit_identically(tmp_path: Path, one_thread) -> None:
    encoder, data, cfg = _fine_tuning(tmp_path)
    full = train(cfg, data, tmp_path / "full", encoder=encoder(), progress=False)
    assert full.steps == 4
    # Stopped before step 3: resumes from the checkpoint of step 2 with the neighbour bank of step 0.
    assert train(cfg, data, tmp_path / "cut", encoder=encoder(), progress=False, stop_at=3) is None
    resumed_encoder = encoder()  # a fresh process: the checkpoint restores the fine-tuned blocks
    resumed = train(cfg, data, tmp_path / "cut", encoder=resumed_encoder, resume=True, progress=False)
    assert [r["loss"] for r in resumed.log] == [r["loss"] for r in full.log]
    for name in ("head.safetensors", "encoder.safetensors"):
        a, b = load_file(str(tmp_path / "full" / name)), load_file(str(tmp_path / "cut" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_dataloader_workers_prepare_the_same_batches(tmp_path: Path, one_thread) -> None:
    """Image batches decoded and augmented in a DataLoader worker process give the in-process losses exactly."""
    encoder, data, cfg = _fine_tuning(tmp_path)
    here = train(cfg, data, tmp_path / "here", encoder=encoder(), progress=False)
    worker = train(dataclasses.replace(cfg, num_workers=1), data, tmp_path / "worker", encoder=encoder(),
                   progress=False)
    assert [r["loss"] for r in worker.log] == [r["loss"] for r in here.log] and len(here.log) == 4
