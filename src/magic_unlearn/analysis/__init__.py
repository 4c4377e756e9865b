"""Attribution analysis and validation.

- :func:`analyze`: the four questions (separation, purely-hazard tokens, hazard-specific
  examples, magnitude ratio) + concentration, per-position and per-token-id summaries, written
  as ``report.md`` + PNGs + ``metrics.json``.
- :func:`ground_truth`: on the hazard world, AUC / precision@k of each score set for finding
  hazard-fact tokens, MAGIC and baselines side by side.
- :func:`lds`: linear datamodeling score by retraining on random subsets (``analysis.lds``).

Sign convention: ``magic_unlearn.SIGN_CONVENTION`` (negative score = proponent).
"""

from magic_unlearn.analysis.lds import lds, lds_markdown
from magic_unlearn.analysis.run import (
    analyze,
    ground_truth,
    ground_truth_markdown,
)
from magic_unlearn.analysis.scores import ScoreSet, as_score_sets, from_tensors, pick_pair
from magic_unlearn.analysis.stats import (
    bootstrap_ci,
    mass_concentration,
    pearson,
    precision_at_k,
    rankdata,
    roc_auc,
    spearman,
)

__all__ = [
    "ScoreSet",
    "analyze",
    "as_score_sets",
    "bootstrap_ci",
    "from_tensors",
    "ground_truth",
    "ground_truth_markdown",
    "lds",
    "lds_markdown",
    "mass_concentration",
    "pearson",
    "pick_pair",
    "precision_at_k",
    "rankdata",
    "roc_auc",
    "spearman",
]
