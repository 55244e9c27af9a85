"""The book runner: dependency order from notebook metadata, and re-running only what changed."""

import json
from pathlib import Path

import nbformat
import pytest

from ada_utils.book.profile import chapter_profile, profile_markdown
from ada_utils.book.runner import discover, execution_order, run_notebooks


def _write_nb(folder: Path, name: str, needs: list[str], code: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["ada"] = {"needs": needs}
    nb.cells = [nbformat.v4.new_code_cell(code)]
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "ada_utils").mkdir()
    (tmp_path / "ada_utils" / "x.py").write_text("A = 1\n")
    _write_nb(tmp_path / "notebooks", "b_second", ["a_first"], "print('b')")
    _write_nb(tmp_path / "notebooks", "a_first", [], "print('a')")
    _write_nb(tmp_path / "notebooks", "c_third", ["b_second"], "print('c')")
    return tmp_path


def test_order_follows_needs_not_names(project: Path):
    nbs = discover(project / "notebooks")
    _write_nb(project / "notebooks", "0_last", ["c_third"], "print(0)")
    order = execution_order(discover(project / "notebooks"))
    assert order.index("a_first") < order.index("b_second") < order.index("c_third") < order.index("0_last")
    assert set(nbs) == {"a_first", "b_second", "c_third"}


def test_unknown_and_cyclic_needs_are_errors(project: Path):
    _write_nb(project / "notebooks", "a_first", ["c_third"], "print('a')")
    with pytest.raises(ValueError, match="cycle"):
        execution_order(discover(project / "notebooks"))
    _write_nb(project / "notebooks", "a_first", ["nope"], "print('a')")
    with pytest.raises(ValueError, match="unknown notebooks \\['nope'\\]"):
        execution_order(discover(project / "notebooks"))


def test_reruns_only_what_changed(project: Path):
    out = project / "executed"
    first = run_notebooks(root=project, out_dir=out, log=lambda _: None)
    assert set(first) == {"a_first", "b_second", "c_third"}
    assert json.loads((out / "a_first.ipynb").read_text())["cells"][0]["outputs"][0]["text"] in ("a\n", ["a\n"])
    profile = chapter_profile(out)  # papermill's per-cell seconds, read back
    assert set(profile) == {"a_first", "b_second", "c_third"}
    assert profile["a_first"]["slowest"][0]["label"] == "print('a')" and profile["a_first"]["seconds"] >= 0
    assert run_notebooks(root=project, out_dir=out, log=lambda _: None) == {}
    _write_nb(project / "notebooks", "b_second", ["a_first"], "print('b2')")
    assert set(run_notebooks(root=project, out_dir=out, log=lambda _: None)) == {"b_second", "c_third"}
    (project / "ada_utils" / "x.py").write_text("A = 2\n")
    assert len(run_notebooks(root=project, out_dir=out, log=lambda _: None)) == 3


def test_copy_findings_puts_the_results_paragraph_where_the_intro_includes_it(tmp_path, monkeypatch):
    from ada_utils.book.runner import copy_findings

    monkeypatch.setenv("ADA_WORK", str(tmp_path / "work"))
    out = tmp_path / "executed"
    out.mkdir()
    assert "once the results chapter has run" in copy_findings(out).read_text()
    src = tmp_path / "work" / "runs" / "05_results" / "findings.md"
    src.parent.mkdir(parents=True)
    src.write_text("**What this book finds** ...\n")
    assert copy_findings(out).read_text() == "**What this book finds** ...\n"
    mech = tmp_path / "work" / "runs" / "07_mechanism" / "findings.md"
    mech.parent.mkdir(parents=True)
    mech.write_text("Alignment does not beat whitening.\nThe head is the limit.\n")
    assert copy_findings(out).read_text() == ("**What this book finds** ...\n- Where the alignment signal comes from "
                                              "({doc}`../executed/07_mechanism`): Alignment does not beat whitening. "
                                              "The head is the limit.\n")
    assert "executed/findings.md" in (Path(__file__).parents[1] / "book" / "intro.md").read_text()
    encoder = {"name": "efficientnet_lite0", "image_size": 128}
    (src.parents[1] / "04_ablations").mkdir()
    (src.parents[1] / "04_ablations" / "summary.json").write_text(json.dumps({"data_root": "small", "encoder": encoder}))
    (mech.parent / "summary.json").write_text(json.dumps({"data_root": "small", "encoder": encoder}))
    assert "Alignment does not beat whitening." in copy_findings(out).read_text()  # same data and encoder
    (mech.parent / "summary.json").write_text(json.dumps({"data_root": "medium", "data": "embedded benchmark (medium)",
                                                          "scale": "medium", "encoder": encoder}))
    text = copy_findings(out).read_text()  # a params/ run of 07 never speaks for the book's numbers
    assert "Alignment" not in text and "chapter 07's last run is on embedded benchmark (medium) (scale medium" in text


def test_book_recomputes_runs_that_chapters_would_resume():
    from ada_utils.book.runner import book_parameters

    nbs = Path(__file__).parents[1] / "notebooks"
    assert book_parameters(nbs / "03_train.ipynb", {"scale": "tiny"}) == {"overwrite": True, "scale": "tiny"}
    assert book_parameters(nbs / "03_train.ipynb", {"overwrite": False}) == {"overwrite": False}
    assert book_parameters(nbs / "00_data.ipynb", {}) == {}


def test_profile_tables_put_runs_side_by_side(tmp_path):
    """The reproducibility page's clean-clone tables: one column per run, install + chapters + HTML = total."""
    def run(label, commit, seconds):
        return {"label": label, "commit": commit, "date": "2026-11-27", "hardware": "CPU: 2 cores x86_64",
                "install_s": 200.0, "book_s": sum(seconds.values()) + 30.0, "notebooks": seconds,
                "profile": {n: {"seconds": s, "slowest": [{"cell": 3, "label": "x = a | b", "seconds": s}]}
                            for n, s in seconds.items()}}
    path = tmp_path / "book-cpu2.json"
    assert "No clean-clone measurement yet" in profile_markdown(path)
    path.write_text(json.dumps({"runs": [run("before", "a" * 40, {"00_data": 100.0, "04_ablations": 700.0}),
                                         run("after", "b" * 40, {"00_data": 90.0, "04_ablations": 300.0})]}))
    text = profile_markdown(path)
    assert "| `04_ablations` | 700 s | 300 s |" in text
    assert "| **total, from `git clone`** | **17.2 min** | **10.3 min** |" in text  # 200 + 830 s, 200 + 420 s
    assert "| HTML (jupyter-book) and photos | 30 s | 30 s |" in text and "x = a \\| b" in text

