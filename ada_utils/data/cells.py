"""Which test cases are object-centric or style-centric, seen or unseen: one table for every chapter.

A *cell* is ``"<test case>/<prompt type>"``. The groups that the book compares (object vs style cells; seen vs
unseen object categories) come from this table, for AbC's four test cases and the embedded benchmark's three,
never from string tests on cell names elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class CaseKind(NamedTuple):
    """What a test case measures: ``concept`` is ``"object"`` or ``"style"``; ``seen`` says whether the
    supervised baseline's training categories include it (``None`` for style cases)."""

    concept: str
    seen: bool | None


TEST_CASE_KINDS: dict[str, CaseKind] = {
    # AbC (Wang et al., ICCV 2023): ImageNet classes seen / unseen by the tuned baseline, BAM-FG and Artchive styles.
    "test_observed_imagenet": CaseKind("object", True),
    "test_unobserved_imagenet": CaseKind("object", False),
    "test_bamfg": CaseKind("style", None),
    "test_artchive": CaseKind("style", None),
    # The embedded benchmark (same layout and roles).
    "test_objects_seen": CaseKind("object", True),
    "test_objects_unseen": CaseKind("object", False),
    "test_styles": CaseKind("style", None),
}


def case_kind(cell: str) -> CaseKind:
    """The kind of a cell (``"test_styles/object"``) or test case (``"test_bamfg"``)."""
    case = cell.split("/")[0]
    if case not in TEST_CASE_KINDS:
        raise KeyError(f"test case {case!r} is not in ada_utils.data.cells.TEST_CASE_KINDS "
                       f"({', '.join(TEST_CASE_KINDS)}); add a row saying whether it is object or style, seen or not")
    return TEST_CASE_KINDS[case]


def object_cells(cells: Iterable[str]) -> list[str]:
    """The object-centric cells, in the given order."""
    return [c for c in cells if case_kind(c).concept == "object"]


def style_cells(cells: Iterable[str]) -> list[str]:
    """The style-centric cells, in the given order."""
    return [c for c in cells if case_kind(c).concept == "style"]


def seen_object_cells(cells: Iterable[str]) -> list[str]:
    """Object cells whose categories the supervised baseline trains on."""
    return [c for c in cells if case_kind(c) == CaseKind("object", True)]


def unseen_cells(cells: Iterable[str]) -> list[str]:
    """Cells unseen by the supervised baseline: unseen-object and style cells."""
    return [c for c in cells if case_kind(c).seen is not True]
