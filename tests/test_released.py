"""AbC's released feature files and tuned mappers (``ada_utils.eval.released``) and ``ada eval --abc-feats``.

The files are built with ``torch.save`` in the layout of GenDataAttribution at ``ed044d0``
(https://github.com/PeterWang512/GenDataAttribution: ``extract_feat.py`` writes ``laion_subset.pth`` and the
per-test-case files, ``eval.py`` reads them with ``weights/mapper/<model>_tuned.pth``). Metrics are checked
against ``abc_metrics`` on the same arrays, ``evaluate``, and :func:`_eval_py`, a paraphrase of ``eval.py``'s
per-query loop (gallery = distractors + the chunk of the query's model, one sort per query).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ada_utils.cli import main
from ada_utils.encoders.features import BenchmarkFeatures, CaseFeatures
from ada_utils.eval import evaluate
from ada_utils.eval.released import (CASE_KEYS, load_mapper, load_released_features, read_case_file,
                                     save_case_file, write_released_features)
from ada_utils.retrieval import abc_metrics

REPO = Path(__file__).resolve().parents[1]
D, N, PER_MODEL = 8, 60, 3
CASES = {"test_bamfg": ((3, 1, 4), ("gpt", "object")),  # several exemplars per model: real chunks
         "test_observed_imagenet": ((1, 1, 1, 1), ("gpt", "media"))}
KS = (5, 10, 100)


def _case(rng: np.random.Generator, sizes: tuple[int, ...], prompts: tuple[str, ...]) -> dict:
    """A test-case dict exactly as ``extract_feat.py --json`` saves it; queries lie near their model's exemplars."""
    chunks, start = [], 0
    for s in sizes:
        chunks.append((start, start + s))
        start += s
    ex = rng.normal(size=(start, D)).astype(np.float32)
    ids = [m for m in range(len(sizes)) for _ in range(PER_MODEL)]
    data = {"exemplar_paths": [f"dataset/exemplar/x/images/g{m}/{i}.jpg" for m, s in enumerate(sizes)
                               for i in range(s)],
            "exemplar_chunks": chunks, "exemplar_tensors": torch.from_numpy(ex),
            "synth_paths": {}, "synth_ids": {}, "synth_tensors": {}}
    for k in prompts:
        centre = np.stack([ex[slice(*chunks[m])].mean(0) for m in ids])
        q = (centre + 0.8 * rng.normal(size=centre.shape)).astype(np.float32)
        data["synth_paths"][k] = [f"dataset/synth/x/{k}/c{m}/samples/{j:05d}.png" for j, m in enumerate(ids)]
        data["synth_ids"][k] = list(ids)
        data["synth_tensors"][k] = torch.from_numpy(q)
    return data


@pytest.fixture
def feats(tmp_path) -> tuple[Path, dict]:
    """``<tmp>/feats/dino/``: laion_subset.pth + two test-case files; returns the folder and the raw dicts."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "feats" / "dino"
    folder.mkdir(parents=True)
    dist = rng.normal(size=(N, D)).astype(np.float32)
    torch.save({"feats": torch.from_numpy(dist), "paths": [f"dataset/laion_subset/{i:07d}.png" for i in range(N)]},
               folder / "laion_subset.pth")
    raw = {"laion": dist}
    for name, (sizes, prompts) in CASES.items():
        raw[name] = _case(rng, sizes, prompts)
        torch.save(raw[name], folder / f"{name}.pth")
    return folder, raw


def _arrays(case: dict, k: str):
    """(queries, query model, exemplars, exemplar model) of one cell, model ids read off the chunks."""
    ex_model = np.concatenate([np.full(e - s, m) for m, (s, e) in enumerate(case["exemplar_chunks"])])
    return (case["synth_tensors"][k].numpy(), np.array(case["synth_ids"][k]), case["exemplar_tensors"].numpy(),
            ex_model)


def _eval_py(dist, case, k, real=None, synth=None) -> dict:
    """A paraphrase of AbC ``eval.py``'s ``validate`` for one prompt type (maps are torch modules)."""
    def prep(x, fmap):
        x = torch.as_tensor(np.asarray(x))
        return torch.nn.functional.normalize(fmap(x) if fmap is not None else x, dim=-1)

    with torch.no_grad():
        d, ex, qs = prep(dist, real), prep(case["exemplar_tensors"], real), prep(case["synth_tensors"][k], synth)
    aps, recs = [], []
    for m, q in zip(case["synth_ids"][k], qs):
        start, end = case["exemplar_chunks"][m]
        score = torch.cat([d, ex[start:end]]) @ q
        pred = torch.argsort(-score, stable=True)
        pos = (torch.nonzero(pred >= len(d))[:, 0] + 1).double()
        aps.append(float((torch.arange(1, len(pos) + 1) / pos).mean()))
        recs.append([int((pred[:kk] >= len(d)).sum()) / (end - start) for kk in KS])
    rec = np.mean(recs, axis=0)
    return {"mAP": float(np.mean(aps)), **{f"R@{kk}": float(r) for kk, r in zip(KS, rec)}}


def _direct(dist, raw, *, real_map=None, synth_map=None) -> dict:
    """``abc_metrics`` called on each cell's arrays: the numbers ``ada eval --abc-feats`` must print."""
    out = {}
    for name, (_, prompts) in CASES.items():
        for k in prompts:
            q, qm, ex, em = _arrays(raw[name], k)
            r = abc_metrics(q, qm, ex, em, dist, KS, real_map=real_map, synth_map=synth_map)
            out[f"{name}/{k}"] = {**{f"R@{kk}": r["recall"][kk] for kk in KS}, "mAP": r["map"], "n_queries": len(q)}
    return out


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["eval", *map(str, argv), "--device", "cpu"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _assert_cells(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for cell, m in want.items():
        for key, v in m.items():
            assert got[cell][key] == pytest.approx(v, rel=1e-12, abs=1e-12), (cell, key)


def test_abc_feats_metrics_equal_abc_metrics_evaluate_and_eval_py(feats, tmp_path, capsys):
    folder, raw = feats
    rc, out, _ = _cli(capsys, "--abc-feats", folder, "--out", tmp_path / "m.json")
    assert rc == 0 and "test_bamfg/object" in out
    saved = json.loads((tmp_path / "m.json").read_text())
    want = _direct(raw["laion"], raw)
    _assert_cells(saved["cells"], want)
    _assert_cells(evaluate(load_released_features(folder)), want)
    for name, (_, prompts) in CASES.items():
        for k in prompts:
            _assert_cells({"c": {key: saved["cells"][f"{name}/{k}"][key] for key in ("mAP", "R@5", "R@10", "R@100")}},
                          {"c": _eval_py(raw["laion"], raw[name], k)})
    assert saved["cells"]["test_bamfg/gpt"]["n_queries"] == 3 * PER_MODEL
    assert 0 < saved["cells"]["test_bamfg/gpt"]["R@5"] < 1  # the fixture is neither trivial nor hopeless
    assert {k: saved[k] for k in ("source", "mapper", "n_distractors", "encoder")} == {
        "source": "abc-feats", "mapper": None, "n_distractors": N, "encoder": {"name": "dino", "source": "abc-feats"}}
    assert set(saved) >= {"chance", "root", "hardware"} and set(saved["chance"]) == set(want)


def _save_mapper(path: Path, real: torch.nn.Linear, synth: torch.nn.Linear) -> Path:
    torch.save({"real_mapper": real.state_dict(), "synth_mapper": synth.state_dict()}, path)
    return path


def _linear(w: np.ndarray, b: np.ndarray) -> torch.nn.Linear:
    lin = torch.nn.Linear(D, D)
    lin.load_state_dict({"weight": torch.from_numpy(w.astype(np.float32)),
                         "bias": torch.from_numpy(b.astype(np.float32))})
    return lin


def test_identity_mapper_gives_the_pretrained_numbers(feats, tmp_path, capsys):
    folder, _ = feats
    eye = _linear(np.eye(D), np.zeros(D))
    mapper = _save_mapper(tmp_path / "dino_tuned.pth", eye, eye)
    _cli(capsys, "--abc-feats", folder, "--out", tmp_path / "plain.json")
    rc, _, _ = _cli(capsys, "--abc-feats", folder, "--mapper", mapper, "--out", tmp_path / "eye.json")
    plain, mapped = (json.loads((tmp_path / f).read_text()) for f in ("plain.json", "eye.json"))
    assert rc == 0 and mapped["cells"] == plain["cells"] and mapped["mapper"] == "dino_tuned.pth"


def test_mapper_acts_as_x_wt_plus_b(feats, tmp_path, capsys):
    folder, raw = feats
    rng = np.random.default_rng(5)
    wr, ws = np.eye(D) + 0.7 * rng.normal(size=(D, D)), np.eye(D) + 0.7 * rng.normal(size=(D, D))
    br, bs = rng.normal(size=D), rng.normal(size=D)
    real, synth = _linear(wr, br), _linear(ws, bs)
    mapper = _save_mapper(tmp_path / "m.pth", real, synth)
    rc, _, _ = _cli(capsys, "--abc-feats", folder, "--mapper", mapper, "--out", tmp_path / "m.json")
    got = json.loads((tmp_path / "m.json").read_text())["cells"]
    f32 = np.float32
    want = _direct(raw["laion"], raw, real_map=lambda x: x @ wr.T.astype(f32) + br.astype(f32),
                   synth_map=lambda x: x @ ws.T.astype(f32) + bs.astype(f32))
    assert rc == 0 and want != _direct(raw["laion"], raw)  # the maps change the numbers...
    _assert_cells(got, want)  # ...exactly as x @ W.T + b predicts (real: gallery, synth: queries)
    _assert_cells({"c": {k: got["test_bamfg/object"][k] for k in ("mAP", "R@5", "R@10", "R@100")}},
                  {"c": _eval_py(raw["laion"], raw["test_bamfg"], "object", real, synth)})
    real_map, synth_map = load_mapper(mapper, dim=D)
    x = raw["laion"][:5]
    with torch.no_grad():
        np.testing.assert_allclose(real_map(x), real(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(synth_map(x), synth(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_distractors_uses_the_first_n(feats, tmp_path, capsys):
    folder, raw = feats
    rc, _, _ = _cli(capsys, "--abc-feats", folder, "--distractors", 20, "--out", tmp_path / "m.json")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert rc == 0 and saved["n_distractors"] == 20
    _assert_cells(saved["cells"], _direct(raw["laion"][:20], raw))
    assert load_released_features(folder, distractors=20).distractor_ids[-1] == "dataset/laion_subset/0000019.png"
    rc, _, err = _cli(capsys, "--abc-feats", folder, "--distractors", N + 1)
    assert rc == 2 and f"distractors={N + 1} requested but the file holds {N}" in err


def test_writer_round_trips_and_matches_extract_feat_layout(feats, tmp_path):
    folder, raw = feats
    bf = load_released_features(folder)
    out = write_released_features(bf, tmp_path / "ours" / "dino")
    back = load_released_features(out)
    np.testing.assert_array_equal(back.distractors, bf.distractors)
    assert back.distractor_ids == bf.distractor_ids and list(back.cases) == list(bf.cases)
    for name, case in bf.cases.items():
        other = back.cases[name]
        np.testing.assert_array_equal(other.exemplars, case.exemplars)
        np.testing.assert_array_equal(other.exemplar_model, case.exemplar_model)
        assert other.exemplar_ids == case.exemplar_ids and other.query_ids == case.query_ids
        for k in case.queries:
            np.testing.assert_array_equal(other.queries[k], case.queries[k])
            np.testing.assert_array_equal(other.query_model[k], case.query_model[k])
        written = torch.load(out / f"{name}.pth", weights_only=True)
        assert list(written) == list(CASE_KEYS) and written["exemplar_chunks"] == raw[name]["exemplar_chunks"]
        assert written["synth_ids"] == raw[name]["synth_ids"] and written["exemplar_tensors"].dtype == torch.float32
    laion = torch.load(out / "laion_subset.pth", weights_only=True)
    assert set(laion) == {"feats", "paths"} and laion["feats"].shape == (N, D)


def test_writer_groups_exemplars_by_model(tmp_path):
    """Exemplars interleaved across models become consecutive chunks; the metrics do not change."""
    rng = np.random.default_rng(3)
    ex, em = rng.normal(size=(5, D)).astype(np.float32), np.array([1, 0, 1, 0, 1])
    case = CaseFeatures(queries={"gpt": rng.normal(size=(4, D)).astype(np.float32)},
                        query_model={"gpt": np.array([0, 1, 1, 0])}, exemplars=ex, exemplar_model=em)
    bf = BenchmarkFeatures({"test_x": case}, rng.normal(size=(30, D)).astype(np.float32), {"name": "toy"})
    write_released_features(bf, tmp_path / "toy")
    back = read_case_file(tmp_path / "toy" / "test_x.pth")
    np.testing.assert_array_equal(back.exemplars, ex[[1, 3, 0, 2, 4]])
    assert back.exemplar_ids == [""] * 5 and back.query_ids == {"gpt": [""] * 4}
    assert evaluate(load_released_features(tmp_path / "toy")) == evaluate(bf)
    with pytest.raises(ValueError, match="must start with 'test_'"):
        write_released_features(BenchmarkFeatures({"x": case}, bf.distractors, {}), tmp_path / "bad")


def _break(folder: Path, raw: dict, what: str, tmp_path: Path) -> list[str]:
    """Damage the fixture one way; returns the extra CLI arguments (a mapper) to pass."""
    case = folder / "test_bamfg.pth"
    if what == "not torch":
        (folder / "laion_subset.pth").write_text("not a torch file\n")
    elif what == "truncated":
        case.write_bytes(case.read_bytes()[:200])
    elif what == "other keys":
        torch.save({"feats": torch.zeros(2, D)}, case)
    elif what == "dims":
        torch.save({**raw["test_bamfg"], "exemplar_tensors": torch.zeros(8, D + 1),
                    "synth_tensors": {k: torch.zeros(9, D + 1) for k in ("gpt", "object")}}, case)
    elif what == "chunks":
        torch.save({**raw["test_bamfg"], "exemplar_chunks": [(0, 3), (4, 5), (5, 8)]}, case)
    elif what == "ids":
        torch.save({**raw["test_bamfg"], "synth_ids": {k: [7] * 9 for k in ("gpt", "object")}}, case)
    elif what.startswith("mapper"):
        lin = torch.nn.Linear(D, D)
        obj = {"mapper dims": {"real_mapper": torch.nn.Linear(4, 4).state_dict(),
                               "synth_mapper": torch.nn.Linear(4, 4).state_dict()},
               "mapper keys": {"real": lin.state_dict(), "synth": lin.state_dict()},
               "mapper mlp": {"real_mapper": torch.nn.Sequential(lin).state_dict(), "synth_mapper": lin.state_dict()},
               "mapper pickle": {"real_mapper": lin.state_dict(), "synth_mapper": lin.state_dict(),
                                 "args": argparse.Namespace(lr=1)}}[what]
        torch.save(obj, tmp_path / "dino_tuned.pth")
        return ["--mapper", str(tmp_path / "dino_tuned.pth")]
    return []


@pytest.mark.parametrize("what, file, message", [
    ("not torch", "laion_subset.pth", "not a torch file"),
    ("truncated", "test_bamfg.pth", "truncated or not a torch file"),
    ("other keys", "test_bamfg.pth", "not a test-case feature file: expected the keys"),
    ("dims", "test_bamfg.pth", "features have D=9 but .*laion_subset.pth has D=8"),
    ("chunks", "test_bamfg.pth", "exemplar_chunks must be consecutive"),
    ("ids", "test_bamfg.pth", r"synth_ids\['gpt'\] must give one model index in 0..2"),
    ("mapper dims", "dino_tuned.pth", "maps D=4 features but the features in .* have D=8"),
    ("mapper keys", "dino_tuned.pth", r"expected the keys \['real_mapper', 'synth_mapper'\].*found \['real', "),
    ("mapper mlp", "dino_tuned.pth", r"exactly the keys \['bias', 'weight'\], found \['0.bias', '0.weight'\]"),
    ("mapper pickle", "dino_tuned.pth", r"object argparse.Namespace, which torch.load\(weights_only=True\) refuses"),
])
def test_bad_files_fail_with_one_line_naming_the_file(feats, tmp_path, capsys, what, file, message):
    folder, raw = feats
    extra = _break(folder, raw, what, tmp_path)
    rc, _, err = _cli(capsys, "--abc-feats", folder, *extra)
    assert rc == 2 and err.startswith("ada eval: error: ") and err.count("\n") == 1, err
    assert f"{file}: " in err
    assert re.search(message, err), err


def test_missing_folder_and_no_test_cases(feats, tmp_path, capsys):
    folder, _ = feats
    rc, _, err = _cli(capsys, "--abc-feats", tmp_path / "nope")
    assert rc == 2 and "nope: features folder not found" in err
    for case in CASES:
        (folder / f"{case}.pth").unlink()
    rc, _, err = _cli(capsys, "--abc-feats", folder)
    assert rc == 2 and "no test-case feature files (test_*.pth)" in err and "extract_feat.py --json" in err
    (folder / "laion_subset.pth").unlink()
    torch.save({}, folder / "test_x.pth")
    rc, _, err = _cli(capsys, "--abc-feats", folder)
    assert rc == 2 and "laion_subset.pth: distractor features" in err


def test_flag_names_and_mapper_scope(tmp_path, capsys):
    for old in (["--root", "r"], ["--data-root", "r", "--encoder", "dino"]):
        with pytest.raises(SystemExit) as exc:
            main(["eval", *old])
        assert exc.value.code == 2
    with pytest.raises(SystemExit):  # one source only
        main(["eval", "--data-root", "r", "--abc-feats", "f"])
    capsys.readouterr()
    rc, _, err = _cli(capsys, "--data-root", tmp_path, "--mapper", tmp_path / "m.pth")
    assert rc == 2 and "--mapper applies to AbC's released features only" in err


def test_cli_subprocess(feats, tmp_path):
    folder, raw = feats
    done = subprocess.run([sys.executable, "-m", "ada_utils", "eval", "--abc-feats", str(folder), "--device", "cpu",
                           "--out", str(tmp_path / "m.json")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "test_observed_imagenet/media" in done.stdout
    _assert_cells(json.loads((tmp_path / "m.json").read_text())["cells"], _direct(raw["laion"], raw))
