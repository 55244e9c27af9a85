"""Paths as the book shows them: relative to the work folder or the repository root, never absolute.

A built page must not show where this machine keeps the repository, its runs or its caches. Chapters keep
absolute paths for reading and writing, and print them through :func:`shown_path` (one path) or
:func:`relative_paths` (text such as a command line or a command's output). Ids of images are paths relative to
the benchmark's data root (:func:`relative_ids`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ada_utils.project import repo_root, work_dir


def _roots() -> list[Path]:
    """The work folder and the repository root, deepest first (so a work folder inside the repo wins)."""
    roots = {work_dir().resolve(), repo_root().resolve()}
    return sorted(roots, key=lambda p: len(p.parts), reverse=True)


def shown_path(path: str | Path) -> str:
    """``path`` relative to the work folder (``ADA_WORK``) or else the repository root, in POSIX form.

    A path outside both is shown as ``…/<file name>``; a relative path is returned as it is.

    Examples:
        ``<repo>/runs/03_train/ada-seed0`` -> ``runs/03_train/ada-seed0``.
    """
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    resolved = path.resolve()
    for root in _roots():
        if resolved == root:
            return "."
        if resolved.is_relative_to(root):
            return resolved.relative_to(root).as_posix()
    return f"…/{path.name}"


def relative_paths(text: str) -> str:
    """``text`` with every absolute path under the work folder or the repository root written relative to it.

    Both the paths as given and their resolved forms are replaced (``<root>/x`` -> ``x``, a bare ``<root>`` ->
    ``.``); other text is unchanged.
    """
    prefixes = {str(root) for root in (work_dir(), repo_root(), *_roots())}
    for prefix in sorted(prefixes, key=len, reverse=True):  # a root followed by "/" or by no path character
        pattern = re.compile(re.escape(prefix) + r"(/|(?![\w.\-]))")
        text = pattern.sub(lambda m: "" if m.group(1) == "/" else ".", text)
    return text


def relative_ids(paths: Iterable[str | Path], root: str | Path) -> list[str]:
    """Image ids: each path relative to ``root`` (the benchmark's data root), in POSIX form.

    Raises:
        ValueError: a path is not under ``root``.
    """
    root = Path(root)
    return [Path(p).relative_to(root).as_posix() for p in paths]
