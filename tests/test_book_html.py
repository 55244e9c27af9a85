"""The built book renders its mathematics without network and leaks no path of the machine that built it.

A tiny Jupyter Book is built for real in a temporary folder with the project's ``_config.yml``: the real method
page (its ``{doc}`` targets as stub pages), a small executed notebook with dollar math in a markdown cell and a
MyST page with the ``{math}`` role and directive.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.prefix) / "bin" / "jupyter-book"

pytestmark = pytest.mark.slow

SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc=\"([^\"]+)\"")
DOC_REF = re.compile(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`")


def _stub_targets(page: Path, root: Path) -> list[str]:
    """Write a stub page for every ``{doc}`` target of ``page``; their paths from ``root``, without suffix."""
    stubs = []
    for target in sorted(set(DOC_REF.findall(page.read_text()))):
        path = (page.parent / target).resolve().relative_to(root.resolve())
        if not (root / path.with_suffix(".md")).exists():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path.with_suffix(".md")).write_text(f"# Stub {path.name}\n\nA placeholder page.\n")
            stubs.append(path.as_posix())
    return stubs


def _notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A tiny notebook\n\nThe weight $\\lambda$ trades the two losses:\n\n"
                                      "$$L = L_A + \\lambda L_D$$"),
        nbformat.v4.new_code_cell("print(6 * 7)", execution_count=1,
                                  outputs=[nbformat.v4.new_output("stream", name="stdout", text="42\n")]),
    ]
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source folder, _build/html) of a tiny book built with the project's configuration."""
    src = tmp_path_factory.mktemp("tiny_book")
    (src / "book").mkdir()
    (src / "executed").mkdir()
    shutil.copy(REPO / "_config.yml", src / "_config.yml")
    shutil.copy(REPO / "book" / "method.md", src / "book" / "method.md")
    _notebook(src / "executed" / "tiny.ipynb")
    (src / "book" / "roles.md").write_text("# Math roles\n\nThe role {math}`\\alpha_k` and the directive:\n\n"
                                           "```{math}\n:label: eq-tiny\n\\beta = \\tfrac12\n```\n")
    stubs = _stub_targets(src / "book" / "method.md", src)
    chapters = "".join(f"  - file: {f}\n" for f in ["executed/tiny", "book/roles", *stubs])
    (src / "_toc.yml").write_text(f"format: jb-book\nroot: book/method\nchapters:\n{chapters}")
    result = subprocess.run([str(JUPYTER_BOOK), "build", str(src), "--keep-going"], cwd=src,
                            capture_output=True, text=True, timeout=600)
    html = src / "_build" / "html"
    assert result.returncode == 0 and (html / "index.html").is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    return src, html


@pytest.mark.parametrize("page", ["book/method.html", "executed/tiny.html", "book/roles.html"])
def test_math_is_typeset_by_a_local_mathjax(built: tuple[Path, Path], page: str):
    _, html = built
    text = (html / page).read_text()
    # $...$ and $$...$$ become \(...\) and \[...\], which MathJax typesets in the reader's browser.
    assert re.search(r"\\\(.+?\\\)", text) and re.search(r"\\\[.+?\\\]", text, re.S), f"{page}: no math"
    if page == "executed/tiny.html":
        assert "\\(\\lambda\\)" in text and "\\[L = L_A + \\lambda L_D\\]" in text
    if page == "book/roles.html":  # MyST's {math} role and directive
        assert "\\(\\alpha_k\\)" in text and "\\beta = \\tfrac12" in text
    math_scripts = [s for s in SCRIPT_SRC.findall(text) if "mathjax" in s.lower() or "katex" in s.lower()]
    assert math_scripts, f"{page} loads no MathJax/KaTeX script"
    for src in math_scripts:
        assert "://" not in src and not src.startswith("//"), f"{page} loads math from the network: {src}"
        local = ((html / page).parent / src.split("?")[0]).resolve()
        assert local.is_file() and (html / "_static").resolve() in local.parents, src
    # MathJax's CommonHTML output needs its fonts beside it.
    assert list((html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


def test_notebook_output_is_rendered(built: tuple[Path, Path]):
    _, html = built
    text = (html / "executed" / "tiny.html").read_text()
    assert "print" in text and "42" in text


def test_no_page_loads_math_from_a_cdn(built: tuple[Path, Path]):
    _, html = built
    pages = list(html.rglob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        text = page.read_text()
        assert "mathjax@" not in text and "cdn.jsdelivr" not in text, page
        urls = re.findall(r"(?:src|href)=\"([^\"]*cdn\.[^\"]*)\"", text)
        assert not [u for u in urls if "math" in u.lower() or "katex" in u.lower()], (page, urls)


def test_no_built_file_contains_a_local_path(built: tuple[Path, Path]):
    src, html = built
    needles = {str(REPO), str(REPO.resolve()), str(src), str(src.resolve())}
    for path in html.rglob("*"):
        if path.is_file() and path.suffix in {".html", ".js", ".json", ".txt", ".css", ".ipynb", ".md", ""}:
            text = path.read_text(errors="replace")
            found = [n for n in needles if n in text]
            assert not found, f"{path.relative_to(html)} contains {found}"
