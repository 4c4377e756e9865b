"""Confidence intervals for numbers measured on a finite question set (pure Python, no torch).

An accuracy measured on n questions is a binomial proportion: with 60 questions one question is
1.67 points, so two accuracies a few points apart may differ by chance alone. The tamper verdict
and the report judge accuracies by their Wilson score intervals (Wilson 1927, "Probable
Inference, the Law of Succession, and Statistical Inference"), which stay inside [0, 1] and keep
their coverage at small n and near 0 or 1, unlike the normal approximation. The report compares
attribution AUCs with the Hanley-McNeil standard error (Hanley and McNeil 1982, "The Meaning and
Use of the Area under a Receiver Operating Characteristic (ROC) Curve").
"""

from __future__ import annotations

import math
from statistics import NormalDist


def z_value(confidence: float = 0.95) -> float:
    """The two-sided normal quantile of a confidence level (1.96 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(acc: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``acc`` observed on ``n`` trials.

    Args:
        acc: the observed fraction in [0, 1] (e.g. accuracy; k / n).
        n: the number of questions (>= 1).
        confidence: the coverage (0.95: a 95% interval).

    Returns:
        ``(low, high)`` in [0, 1].
    """
    if n < 1:
        raise ValueError(f"wilson_interval needs n >= 1 questions, got {n}")
    if not (0.0 <= acc <= 1.0) or math.isnan(acc):
        raise ValueError(f"wilson_interval: acc must be a fraction in [0, 1], got {acc}")
    z = z_value(confidence)
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (acc + z2 / (2 * n)) / denom
    half = z * math.sqrt(acc * (1.0 - acc) / n + z2 / (4 * n * n)) / denom
    # the interval contains acc exactly; at acc = 0 or 1 its end equals acc only up to rounding,
    # and a 1e-17 overshoot made error bars negative (matplotlib refuses them)
    return min(acc, max(0.0, centre - half)), max(acc, min(1.0, centre + half))


def significantly_above(a: float, n_a: int, b: float, n_b: int, confidence: float = 0.95) -> bool:
    """Whether accuracy ``a`` (on ``n_a`` questions) is above ``b`` (on ``n_b``) beyond noise:
    the lower end of a's interval exceeds the upper end of b's. (Non-overlapping intervals: a
    conservative test: a gap of one or a few questions is never significant.)"""
    return wilson_interval(a, n_a, confidence)[0] > wilson_interval(b, n_b, confidence)[1]


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley-McNeil standard error of an ROC AUC from ``n_pos`` positives and ``n_neg``
    negatives (independent units assumed; tokens of one document are not, so it is a floor)."""
    if n_pos < 1 or n_neg < 1:
        return math.nan
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    var = (auc * (1.0 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (
        n_pos * n_neg
    )
    return math.sqrt(max(var, 0.0))


__all__ = ["auc_standard_error", "significantly_above", "wilson_interval", "z_value"]
