"""The setup cell every chapter runs right after its ``parameters`` cell.

``setup`` checks what papermill injected against the notebook's own defaults (a misspelt name or a value of the
wrong type is an error, not a silently ignored setting), moves to the repository root so relative paths work
from JupyterLab and papermill alike, seeds everything and applies the book's plotting style.

How the check finds the two cells: IPython keeps every executed cell's source in ``In``. The chapter's
parameters cell starts with the line ``# Parameters of this chapter`` (see ``PARAMETERS_MARKER``); papermill's
injected cell starts with ``# Parameters`` alone. Allowed values can be declared in a parameter's comment as
``[a|b|c]``, e.g. ``method = "ada"  # training method [pretrained|align|ada]``.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ada_utils.project import hardware, repo_root, set_seed

PARAMETERS_MARKER = "# Parameters of this chapter"
_INJECTED_MARKER = "# Parameters\n"
_CHOICES_RE = re.compile(r"\[([^\]\s]+(?:\|[^\]\s]+)+)\]")


class ParameterError(ValueError):
    """A papermill parameter that the notebook does not declare, or a value it does not accept."""


def parse_parameters_cell(source: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Defaults (literal assignments) and declared choices (``[a|b]`` in the line's comment) of a cell."""
    defaults: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            defaults[node.targets[0].id] = ast.literal_eval(node.value)
    choices: dict[str, list[str]] = {}
    for line in source.splitlines():
        name, _, comment = line.partition("#")
        match = _CHOICES_RE.search(comment)
        if "=" in name and match:
            choices[name.split("=")[0].strip()] = match.group(1).split("|")
    return defaults, choices


def _type_ok(default: Any, value: Any) -> bool:
    """Whether ``value`` may replace ``default`` (ints widen to floats; None defaults accept anything)."""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_parameters(defaults: Mapping[str, Any], injected: Mapping[str, Any],
                     choices: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    """Merge ``injected`` into ``defaults``; raise ``ParameterError`` naming every bad name or value."""
    problems = []
    for name, value in injected.items():
        if name not in defaults:
            close = difflib.get_close_matches(name, list(defaults), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"unknown parameter {name!r}.{hint} Valid: {', '.join(sorted(defaults))}")
        elif not _type_ok(defaults[name], value):
            problems.append(f"parameter {name!r} = {value!r} is a {type(value).__name__}; "
                            f"expected {type(defaults[name]).__name__} like the default {defaults[name]!r}")
    merged = {**defaults, **{k: v for k, v in injected.items() if k in defaults}}
    for name, allowed in (choices or {}).items():
        values = merged[name] if isinstance(merged.get(name), (list, tuple)) else [merged.get(name)]
        bad = [v for v in values if str(v) not in allowed]
        if bad:
            problems.append(f"parameter {name!r} = {merged[name]!r} is not allowed; choose from {allowed}")
    if problems:
        raise ParameterError("bad notebook parameters:\n  " + "\n  ".join(problems))
    return merged


def _cells_from_history(namespace: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The latest parameters cell and the papermill cell injected after it, from IPython's ``In`` list."""
    history = list(namespace.get("In", []))
    params = injected = None
    for i in range(len(history) - 1, -1, -1):
        src = history[i].lstrip()
        if src.startswith(PARAMETERS_MARKER):
            params = history[i]
            after = [h for h in history[i + 1:] if h.lstrip().startswith(_INJECTED_MARKER)]
            injected = after[-1] if after else None
            break
    return params, injected


def setup(name: str, namespace: Mapping[str, Any], *, plots: bool = True) -> Mapping[str, Any]:
    """Check parameters, chdir to the repo root, seed, style. Returns the chapter's read-only parameters.

    Args:
        name: the notebook's name (``"03_train"``), recorded with every result.
        namespace: ``globals()`` of the notebook.
        plots: apply the book's matplotlib style.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    params_src, injected_src = _cells_from_history(namespace)
    if params_src is None:
        raise ParameterError(f"{name}: no cell starting with {PARAMETERS_MARKER!r} was run before setup(); "
                             "run the notebook from the top.")
    defaults, choices = parse_parameters_cell(params_src)
    injected = {}
    if injected_src is not None:
        names = parse_parameters_cell(injected_src)[0].keys()
        injected = {k: namespace[k] for k in names}
    current = {k: namespace.get(k, v) for k, v in defaults.items()}
    params = check_parameters(defaults, {**current, **injected}, choices)
    os.chdir(repo_root())
    if "seed" in params:
        set_seed(int(params["seed"]))
    if plots:
        from ada_utils.book.style import set_style

        set_style()
    params = {**params, "notebook": name, "hardware": hardware()}
    print(f"{name}: " + ", ".join(f"{k}={v!r}" for k, v in params.items() if k != "notebook"))
    return MappingProxyType(params)
