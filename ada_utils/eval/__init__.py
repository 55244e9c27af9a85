"""Evaluation: the official metrics per benchmark cell (:mod:`.benchmark`), comparisons under noise
(:mod:`.statistics`), the ablation study (:mod:`.ablation`), the results chapter's tables and galleries
(:mod:`.results`), attributing a user's own images (:mod:`.attribute`) and calibrating its scores
(:mod:`.calibrate`).
"""

from ada_utils.eval.benchmark import cell_means, chance_level, evaluate, per_query_metrics
from ada_utils.eval.statistics import Comparison, Verdict, paired_bootstrap

__all__ = ["Comparison", "Verdict", "cell_means", "chance_level", "evaluate", "paired_bootstrap",
           "per_query_metrics"]
