"""No sentence that states a result is typed by hand: results are generated from a build's numbers.

A heuristic scan of the book's hand-written text (``book/*.md`` and every notebook's markdown cells) for what a
result sentence looks like: a measured number (a decimal such as 0.25 or a percentage), or a comparative verdict
(beats, outperforms, better/worse than, helps, exhausted, carries the method). The paper's own claims, quoted as
claims on the introduction's "What the paper claims" list, are exempt, and so is text that names a parameter's
value or a setting (px, cores, seeds) rather than an outcome.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
VERDICT = re.compile(r"\b(beats?|beat|outperform\w*|better than|worse than|exceeds?|helped|helps|exhausted|"
                     r"carries the method|no smaller|adds little|fails to)\b", re.I)
NUMBER = re.compile(r"(?<![\w.@=/$-])(0?\.\d{2,}|\d+(\.\d+)? ?%)(?![\w.])")
SETTING = re.compile(r"95 %|\b(interval|px|cores?|seeds?|GiB|GB|MB|minutes?|s|margin|default|quality|JPEG|level)\b|δ", re.I)


def _paper_claims(text: str) -> str:
    """The introduction without its list of the paper's claims (quoted claims, not our results)."""
    return re.sub(r"## What the paper claims.*?(?=\n## )", "", text, flags=re.S)


def _texts() -> list[tuple[str, str]]:
    out = [(p.name, _paper_claims(p.read_text())) for p in sorted((REPO / "book").glob("*.md"))]
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        out += [(f"{path.name} cell {i}", c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]
    return out


def _sentences(text: str) -> list[str]:
    text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`|```.*?```", " ", text, flags=re.S)  # maths and code
    return [s.strip() for s in re.split(r"(?<=[.!?:])\s+|\n\s*[-*]\s+|\n\n", text) if s.strip()]


def hand_typed_results(text: str) -> list[str]:
    """Sentences of ``text`` that read like a result: a verdict word, or a number that is not a setting."""
    return [s for s in _sentences(text) if not s.endswith("?")  # a question states nothing
            and (VERDICT.search(s) or (NUMBER.search(s) and not SETTING.search(s)))]


@pytest.mark.parametrize("sentence, flagged", [
    ("The supervised baseline beats ada on every cell.", True),
    ("With λ = 30 the head scores 0.254 on validation.", True),
    ("ada reaches 42 % of the ceiling.", True),
    ("Images are stored at 160 px with JPEG quality 95.", False),
    ("Every row is fitted on the training pool without the validation models.", False),
])
def test_the_scan_tells_results_from_descriptions(sentence: str, flagged: bool) -> None:
    assert bool(hand_typed_results(sentence)) is flagged


def test_no_result_sentence_is_typed_by_hand() -> None:
    found = [f"{where}: {s!r}" for where, text in _texts() for s in hand_typed_results(text)]
    assert not found, "result sentences typed by hand (generate them from the numbers or remove them):\n" + \
        "\n".join(found)
