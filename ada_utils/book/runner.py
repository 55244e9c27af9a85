"""Execute the book's notebooks with papermill, in dependency order, re-running only what changed.

Each notebook declares the notebooks whose outputs it reads in its metadata (``"ada": {"needs": [...]}``); the
order comes from those declarations, not from the table of contents. A notebook is re-run when its own source
(outputs excluded), its parameter file, the ``ada_utils`` sources or any notebook it needs changed since its
last successful run (a content hash, recorded in ``executed/.stamps.json``). Executed copies go to
``executed/``, which ``_toc.yml`` renders.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from ada_utils.project import repo_root
from ada_utils.files import read_json, write_json


@dataclass(frozen=True)
class Notebook:
    """A source notebook and the notebooks it needs."""

    name: str
    path: Path
    needs: tuple[str, ...]


def discover(folder: Path) -> dict[str, Notebook]:
    """All ``*.ipynb`` in ``folder`` with their declared ``needs``."""
    found = {}
    for path in sorted(folder.glob("*.ipynb")):
        meta = json.loads(path.read_text()).get("metadata", {})
        found[path.stem] = Notebook(path.stem, path, tuple(meta.get("ada", {}).get("needs", [])))
    return found


def execution_order(notebooks: dict[str, Notebook]) -> list[str]:
    """Topological order of the notebooks by their ``needs``; unknown or cyclic needs are errors."""
    for nb in notebooks.values():
        missing = [n for n in nb.needs if n not in notebooks]
        if missing:
            raise ValueError(f"{nb.path}: metadata ada.needs names unknown notebooks {missing}")
    try:
        return list(TopologicalSorter({n: nb.needs for n, nb in notebooks.items()}).static_order())
    except CycleError as err:
        raise ValueError(f"notebooks need each other in a cycle: {err.args[1]}") from err


def _source_hash(path: Path) -> str:
    """Hash of a notebook's cell sources and metadata tags only (outputs and execution counts excluded)."""
    cells = json.loads(path.read_text())["cells"]
    body = json.dumps([(c["cell_type"], "".join(c["source"]), c.get("metadata", {}).get("tags", []))
                       for c in cells])
    return hashlib.sha256(body.encode()).hexdigest()


def library_hash(root: Path) -> str:
    """Hash of every ``ada_utils`` source file (a library change re-runs every notebook)."""
    digest = hashlib.sha256()
    for path in sorted((root / "ada_utils").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_notebooks(*, params: Path | None = None, out_dir: Path | None = None, only: list[str] | None = None,
                  force: bool = False, root: Path | None = None, log=print) -> dict[str, float]:
    """Execute stale notebooks in dependency order; returns seconds per executed notebook.

    Args:
        params: papermill YAML parameter file applied to every notebook (None: the notebooks' defaults).
        out_dir: folder for the executed copies (default ``executed/``).
        only: restrict to these notebooks and what they need.
        force: re-run even when the stamps match.
        root: project folder holding ``notebooks/`` and ``ada_utils/`` (default: the repository root).
    """
    import papermill as pm

    root = root or repo_root()
    out_dir = out_dir or root / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    notebooks = discover(root / "notebooks")
    order = execution_order(notebooks)
    if only:
        wanted = _with_needs(notebooks, only)
        order = [n for n in order if n in wanted]
    stamps_path = out_dir / ".stamps.json"
    stamps = read_json(stamps_path) if stamps_path.is_file() else {}
    lib, par = library_hash(root), (params.read_text() if params else "")
    keys: dict[str, str] = {}
    times: dict[str, float] = {}
    for name in order:
        nb = notebooks[name]
        parts = [_source_hash(nb.path), lib, par, *(keys.get(n, stamps.get(n, "")) for n in nb.needs)]
        keys[name] = hashlib.sha256("|".join(parts).encode()).hexdigest()
        target = out_dir / f"{name}.ipynb"
        if not force and stamps.get(name) == keys[name] and target.is_file():
            log(f"[book] {name}: up to date")
            continue
        log(f"[book] {name}: executing ...")
        start = time.perf_counter()
        pm.execute_notebook(str(nb.path), str(target), parameters=book_parameters(nb.path, _load_yaml(params)),
                            cwd=str(root), kernel_name="python3", progress_bar=True, log_output=False)
        times[name] = round(time.perf_counter() - start, 1)
        stamps[name] = keys[name]
        write_json(stamps_path, stamps)
        log(f"[book] {name}: done in {times[name]:.0f} s")
    return times


def book_parameters(path: Path, params: dict) -> dict:
    """``params`` for one notebook of the book: a chapter that resumes matching runs by default (``overwrite``
    parameter) recomputes them, because the book re-runs a chapter exactly when its code or library changed."""
    import nbformat

    from ada_utils.book.notebook import parse_parameters_cell

    cell = next((c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", [])),
                None)
    declared = parse_parameters_cell(cell.source)[0] if cell is not None else {}
    return {**({"overwrite": True} if "overwrite" in declared else {}), **params}


def _with_needs(notebooks: dict[str, Notebook], names: list[str]) -> set[str]:
    """``names`` plus everything they need, transitively."""
    seen: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name not in notebooks:
            raise ValueError(f"unknown notebook {name!r}; have {sorted(notebooks)}")
        if name not in seen:
            seen.add(name)
            stack.extend(notebooks[name].needs)
    return seen


def _load_yaml(path: Path | None) -> dict:
    """Parameters from a YAML file (empty when no file)."""
    if path is None:
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def write_timings(out_dir: Path, times: dict[str, float]) -> None:
    """Merge this run's seconds per notebook into ``timings.json`` and render ``timings.md`` for the book."""
    from ada_utils.project import hardware, library_versions

    path = out_dir / "timings.json"
    merged = {**(read_json(path) if path.is_file() else {}), **times}
    write_json(path, merged)
    rows = "\n".join(f"| `{name}` | {secs:.0f} |" for name, secs in merged.items())
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    (out_dir / "timings.md").write_text(
        f"Hardware: {hardware()}.\n\nVersions: {versions}.\n\n| notebook | seconds |\n|---|---|\n{rows}\n"
        f"| total | {sum(merged.values()):.0f} |\n")


def copy_findings(out_dir: Path) -> Path:
    """Copy the generated findings to where the intro includes them (``<out_dir>/findings.md``): the results
    chapter's (``runs/05_results/findings.md``), then the mechanism chapter's (``runs/07_mechanism/findings.md``) as
    a last item; without a results run, a line saying so.

    The mechanism's finding is included only when its run (``summary.json``) was made on the data and encoder of the
    results (``runs/04_ablations/summary.json``): a chapter 07 run at another scale or on another root (its
    ``params/`` file) would otherwise speak for the book's numbers. Then a line says which run is there instead.
    """
    from ada_utils.files import read_json
    from ada_utils.project import runs_dir

    results, mechanism, dst = (runs_dir() / "05_results" / "findings.md", runs_dir() / "07_mechanism" / "findings.md",
                               out_dir / "findings.md")
    text = (results.read_text() if results.is_file() else
            "*The findings appear here once the results chapter has run (`make book`).*\n")
    if mechanism.is_file():
        other = _other_configuration(runs_dir() / "07_mechanism" / "summary.json",
                                     runs_dir() / "04_ablations" / "summary.json", read_json)
        finding = other or " ".join(mechanism.read_text().split("\n")).strip()
        text = text.rstrip("\n") + "\n- Where the alignment signal comes from ({doc}`../executed/07_mechanism`): " + \
            finding + "\n"
    dst.write_text(text)
    return dst


def _other_configuration(mechanism: Path, ablations: Path, read_json: Callable[[Path], dict]) -> str:
    """A line when the mechanism run and the results' run differ in data root or encoder, else ``""``."""
    if not (mechanism.is_file() and ablations.is_file()):
        return ""
    a, b = read_json(mechanism), read_json(ablations)

    def key(summary: dict) -> tuple:
        enc = summary.get("encoder", {})
        return summary.get("data_root"), enc.get("name"), enc.get("image_size")

    if key(a) == key(b):
        return ""
    return (f"*chapter 07's last run is on {a.get('data', a.get('data_root'))} (scale {a.get('scale')}, "
            f"{a.get('encoder', {}).get('name')}), not on the data of these results: re-run it with the book's "
            "parameters (`make book`) to see its finding here.*")


def write_profile(out_dir: Path) -> None:
    """Render the committed clean-clone measurements (``bench/results/book-cpu*.json``) to
    ``<out_dir>/profile.md`` and the result diff of ``bench/compare_runs.py`` (``book-compare.json``) to
    ``<out_dir>/compare.md``; the reproducibility page includes both."""
    from ada_utils.book.profile import compare_markdown, profile_markdown

    results = repo_root() / "bench" / "results"
    found = sorted(results.glob("book-cpu*.json")) or [results / "book-cpu2.json"]
    (out_dir / "profile.md").write_text("\n".join(profile_markdown(f) for f in found))
    none = "*No comparison yet: run `python bench/compare_runs.py BEFORE/runs AFTER/runs`.*\n"
    (out_dir / "compare.md").write_text(compare_markdown(results / "book-compare.json") or none)
