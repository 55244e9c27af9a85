"""Every notebook of the book executes under papermill with the smoke parameters (tiny benchmark).

Notebooks run in the order their ``ada.needs`` metadata gives (later chapters read earlier chapters' runs), in
the session's private ``ADA_WORK`` folder. A misspelt parameter or a badly typed value fails the run.
"""

from __future__ import annotations

import time
from pathlib import Path

import papermill as pm
import pytest

from ada_utils.book.runner import discover, execution_order

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "params" / "smoke.yaml"
NOTEBOOKS = discover(REPO / "notebooks")
ORDER = execution_order(NOTEBOOKS)
# Chapters that read no other chapter's run and execute on the AbC-named rehearsal root instead of the embedded one
# (tests/test_paper_path.py), which exercises every code path the embedded root does and AbC's names besides.
ON_ABC_ROOT = {"06_attribute_your_images", "07_mechanism"}


def _execute(name: str, out: Path, **params) -> None:
    import yaml

    pm.execute_notebook(str(NOTEBOOKS[name].path), str(out), parameters={**yaml.safe_load(SMOKE.read_text()),
                        **params}, cwd=str(REPO), kernel_name="python3", progress_bar=False)


def test_every_toc_notebook_is_tested():
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    in_toc = {f.removeprefix("executed/") for f in files if f.startswith("executed/")}
    pages = [f for f in files if not f.startswith("executed/")] + [toc["root"]]
    assert all((REPO / f"{page}.md").is_file() for page in pages), pages
    assert in_toc == set(NOTEBOOKS), "every notebook in notebooks/ must be a chapter of _toc.yml and vice versa"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ORDER if n not in ON_ABC_ROOT])
def test_notebook_executes_with_smoke_parameters(name: str, tiny_root: Path, tmp_path: Path):
    start = time.perf_counter()
    _execute(name, tmp_path / f"{name}.ipynb")
    print(f"{name}: {time.perf_counter() - start:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("params, message", [({"scael": "tiny"}, "unknown parameter 'scael'"),
                                             ({"seed": "zero"}, "parameter 'seed' = 'zero' is a str")])
def test_misspelt_or_bad_parameter_fails_clearly(params, message, tiny_root: Path, tmp_path: Path):
    with pytest.raises(pm.PapermillExecutionError, match=message):
        _execute("00_data", tmp_path / "bad.ipynb", **params)


@pytest.mark.slow
def test_training_chapter_runs_the_gradient_solver(tiny_root: Path, tmp_path: Path):
    """The default chapter fits ada in closed form; the gradient solver (loss curves) must run from papermill too."""
    import json
    import re

    _execute("03_train", tmp_path / "03_gradient.ipynb", solver="gradient", lam=1.0, overwrite=True)
    nb = json.loads((tmp_path / "03_gradient.ipynb").read_text())
    text = "".join(o.get("text", "") if isinstance(o.get("text"), str) else "".join(o.get("text", []))
                   for c in nb["cells"] for o in c.get("outputs", []))
    steps = re.search(r"ada: (\d+) steps in", text)
    assert steps and int(steps.group(1)) > 0, "the gradient solver took no training steps"


@pytest.mark.parametrize("name", ORDER)
def test_notebook_cells_hold_calls_not_logic(name: str):
    """Chapters keep narrative, parameters, calls and figures: no cell defines a function or class (a lambda
    bound to a name included), and no code cell but the parameters cell is longer than 25 lines."""
    import ast

    import nbformat

    nb = nbformat.read(NOTEBOOKS[name].path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
            continue
        assert len(cell.source.splitlines()) <= 25, f"{name} cell {i}: {len(cell.source.splitlines())} lines"
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), \
                f"{name} cell {i} defines {node.name!r}: move it to ada_utils"
            if isinstance(node, ast.Assign):
                assert not isinstance(node.value, ast.Lambda), f"{name} cell {i} binds a lambda to a name"
