"""The analysis chapters' findings as Markdown, generated from the measured numbers (never typed by hand).

Chapter 01 prints its cross-fitted headline with :func:`crossfit_lines` and its summary with
:func:`cross_covariance_findings`; chapter 02 its summary with :func:`decomposition_findings`. The numbers come
from :mod:`ada_utils.analysis.measures` (held-out rows) and the verdicts from :mod:`ada_utils.analysis.claims`; every
sentence that states a result is a function of them, so a rerun with other data rewrites the text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ada_utils.analysis.claims import Check, spearman_reading


def null_position(row: Mapping[str, float]) -> str:
    """Where a :func:`ada_utils.analysis.measures.crossfit_row`'s held-out ρ lies: above, inside or below its null."""
    if row["held-out ρ"] > row["null high"]:
        return "above the grouped null"
    return "below the grouped null" if row["held-out ρ"] < row["null low"] else "inside the grouped null"


def _names(names: Iterable[str]) -> str:
    names = [f"`{n}`" for n in names]
    return ", ".join(names) if names else "none"


def crossfit_lines(rows: Mapping[str, Mapping[str, float]], control: Mapping[str, float], *, top: int,
                   n_perm: int) -> str:
    """Markdown bullets: each encoder's held-out ρ against its null, the control, and the in-sample aside.

    Args:
        rows: ``{encoder: crossfit_row}``. control: the :func:`ada_utils.analysis.measures.control_row`.
        top: canonical correlations averaged. n_perm: permutations of the null.
    """
    head = (f"Mean of the first {top} held-out canonical correlations (cross-fitted over models), against the 95 % "
            f"range of the same statistic over {n_perm} permutations of model identities within a test case:")
    lines = [f"* `{n}`: **{r['held-out ρ']:+.3f}**, null [{r['null low']:+.3f}, {r['null high']:+.3f}]: "
             f"{null_position(r)}" for n, r in rows.items()]
    lines.append(f"* control (independent Gaussian features with the test pairs' grouping, mean of "
                 f"{int(control['draws'])} draws): **{control['held-out ρ']:+.3f}**, "
                 f"null [{control['null low']:+.3f}, {control['null high']:+.3f}]: {null_position(control)}")
    aside = ("*Aside, in-sample (CCA fitted on the pairs it is measured on; biased upward):* "
             + ", ".join(f"`{n}` {r['in-sample ρ']:.3f} (its grouped null {r['in-sample null']:.3f})"
                         for n, r in rows.items())
             + f"; the control {control['in-sample ρ']:.3f} (null {control['in-sample null']:.3f}).")
    return "\n".join([head, "", *lines, "", aside])


def cross_covariance_findings(rows: Mapping[str, Mapping[str, float]], control: Mapping[str, float],
                              checks: Iterable[Check], *, claim1: str, claim2: str, spearman: float, scale: str,
                              n_pairs: int, n_models: int) -> str:
    """Chapter 01's "what we learned", as Markdown bullets made from its numbers and verdicts."""
    above = [n for n, r in rows.items() if null_position(r) == "above the grouped null"]
    rest = [n for n in rows if n not in above]
    biased = control["in-sample ρ"] > control["null high"]
    where = (f"for every encoder ({_names(above)})" if not rest else f"for none of the encoders ({_names(rest)})"
             if not above else f"for {_names(above)} and not for {_names(rest)}")
    bullets = [
        f"Held out, the matched pairs' canonical correlations lie above the grouped null {where}.",
        f"The no-signal control reads {control['held-out ρ']:+.3f} held out ({null_position(control)}) and "
        f"{control['in-sample ρ']:.3f} in-sample"
        + (": in-sample canonical correlations on these grouped pairs are high without any signal, which is why "
           "only held-out values are evidence here." if biased else "."),
        f"On our data (scale `{scale}`, {n_pairs} test pairs over {n_models} models) the held-out measurements "
        f"**{claim1}** claim (1) (checks a, b) and **{claim2}** claim (2) (check c).",
        f"(d) Across the {len(rows)} encoders, held-out coordinate correlation {spearman_reading(spearman)} of "
        f"R@5 (Spearman {spearman:.2f}).",
    ]
    verdicts = list(checks)
    if verdicts:
        words = "; ".join(f"{c.label.split(':')[0]}: {c.verdict.word}" for c in verdicts)
        bullets.append(f"Check by check: {words}.")
    return "\n".join(f"* {b}" for b in bullets)


def decomposition_findings(terms: Mapping[str, Mapping[str, float]], held: Mapping[str, Mapping[str, float]],
                           spearman: Mapping[str, float], *, identities: bool, summary: str, scale: str) -> str:
    """Chapter 02's "what we learned", as Markdown bullets made from its numbers.

    Args:
        terms: ``{encoder: matched_distance_terms}``. held: ``{encoder: {"heldout_coord_mean",
            "heldout_cca_mean"}}``. spearman: ``{statistic: ρ with R@5}``. identities: check (i). summary: the
            claim reading of checks (ii), (iii). scale: the benchmark scale.
    """
    worst = max(abs(t["residual"]) for t in terms.values())
    add = {n: h["heldout_cca_mean"] - h["heldout_coord_mean"] for n, h in held.items()}
    reading = {s: spearman_reading(r) for s, r in spearman.items()}
    predict = [s for s, r in reading.items() if r == "predicts the ranking"]
    opposite = [s for s, r in reading.items() if r == "orders the encoders opposite to retrieval"]
    bullets = [
        f"The decomposition identities {'hold' if identities else 'are violated'} on all {len(terms)} encoders "
        f"(largest |residual| of the distance identity {worst:.1e}).",
        "Held out (fitted on training models, measured on test models), CCA on the training pairs changes the mean "
        "correlation of the pair-free coordinates by "
        + ", ".join(f"`{n}` {v:+.3f}" for n, v in add.items())
        + f" (highest for `{max(add, key=add.get)}`)." if add else "No held-out measurement.",
        f"On our data (scale `{scale}`) the measurements **{summary}** the claim that A&D approximates CCA without "
        "pairs (checks ii, iii).",
        f"Across the {len(terms)} encoders (Spearman |ρ| >= 0.8), statistics ordered as R@5: {_names(predict)}; "
        f"ordered opposite to R@5: {_names(opposite)}.",
    ]
    return "\n".join(f"* {b}" for b in bullets)


def control_inside_text(control: Mapping[str, float]) -> str:
    """One line for the sanity cell: the control's held-out ρ against its null's range."""
    return (f"control held-out ρ {control['held-out ρ']:+.4f}; grouped null [{control['null low']:+.4f}, "
            f"{control['null high']:+.4f}]: {null_position(control)}")
