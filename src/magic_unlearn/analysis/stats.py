"""Small, dependency-free statistics used to judge attribution scores (numpy only, no scipy).

Every function takes flat arrays and refuses NaN input with a clear error, so a broken score file
never turns into a silently wrong correlation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _flat(x: np.ndarray | list[float], name: str = "x") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError(
            f"{name} holds {int((~np.isfinite(a)).sum())} NaN/inf values; "
            f"scores must be finite (re-run the attribution or mask those tokens)"
        )
    return a


def rankdata(x: np.ndarray | list[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy's ``rankdata(method='average')``)."""
    a = _flat(x)
    n = a.size
    order = np.argsort(a, kind="mergesort")
    xs = a[order]
    new_group = np.r_[True, xs[1:] != xs[:-1]] if n else np.zeros(0, dtype=bool)
    group = np.cumsum(new_group) - 1  # tie-group index of each sorted position
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], n]  # exclusive
    avg_rank = (starts + ends - 1) / 2.0 + 1.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg_rank[group]
    return ranks


def pearson(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> float:
    """Pearson correlation; NaN when either input is constant or has fewer than 2 values."""
    a, b = _flat(x, "x"), _flat(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"pearson: x has {a.size} values, y has {b.size}")
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def spearman(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> float:
    """Spearman rank correlation: Pearson correlation of average-tie ranks."""
    return pearson(rankdata(x), rankdata(y))


def roc_auc(scores: np.ndarray | list[float], positive: np.ndarray | list[bool]) -> float:
    """Area under the ROC curve of ``scores`` for finding ``positive`` items (higher = positive).

    Uses the Mann-Whitney identity with average ranks, so a tie between a positive and a negative
    counts one half: AUC = P(s_pos > s_neg) + 0.5 P(s_pos = s_neg). NaN when a class is empty.
    """
    s = _flat(scores, "scores")
    pos = np.asarray(positive, dtype=bool).ravel()
    if pos.shape != s.shape:
        raise ValueError(f"roc_auc: {s.size} scores but {pos.size} labels")
    n_pos = int(pos.sum())
    n_neg = s.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(s)
    u = r[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def precision_at_k(
    scores: np.ndarray | list[float], positive: np.ndarray | list[bool], k: int
) -> float:
    """Fraction of positives among the k highest scores, tie-aware.

    Items tied with the k-th highest score are counted by their expected share (as if the tie
    were broken uniformly at random), so the result never depends on array order.
    """
    s = _flat(scores, "scores")
    pos = np.asarray(positive, dtype=bool).ravel()
    if pos.shape != s.shape:
        raise ValueError(f"precision_at_k: {s.size} scores but {pos.size} labels")
    if k <= 0 or s.size == 0:
        return float("nan")
    k = min(int(k), s.size)
    kth = np.sort(s)[::-1][k - 1]
    above = s > kth
    tied = s == kth
    n_above = int(above.sum())
    take_from_tie = k - n_above  # >= 1
    hits = pos[above].sum() + take_from_tie * pos[tied].mean()
    return float(hits / k)


def mass_concentration(
    values: np.ndarray | list[float], fractions: tuple[float, ...] = (0.5, 0.9)
) -> dict[str, float]:
    """How many items hold a given fraction of the total absolute mass.

    Returns:
        ``{"n50": count, "frac50": count / n, ...}`` for each fraction (keys use the percent).
    """
    a = np.sort(np.abs(_flat(values)))[::-1]
    total = a.sum()
    out: dict[str, float] = {}
    for f in fractions:
        tag = f"{round(f * 100):d}"
        if a.size == 0 or total <= 0:
            out[f"n{tag}"], out[f"frac{tag}"] = float("nan"), float("nan")
            continue
        # first index whose cumulative mass reaches f * total (1-based count)
        n = int(np.searchsorted(np.cumsum(a), f * total * (1 - 1e-12), side="left")) + 1
        out[f"n{tag}"] = float(min(n, a.size))
        out[f"frac{tag}"] = float(min(n, a.size) / a.size)
    return out


def concentration_curve(
    values: np.ndarray | list[float], n_points: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of items, fraction of |mass|) for items sorted by decreasing |value|."""
    a = np.sort(np.abs(_flat(values)))[::-1]
    if a.size == 0 or a.sum() <= 0:
        return np.zeros(1), np.zeros(1)
    cum = np.r_[0.0, np.cumsum(a) / a.sum()]
    idx = np.unique(np.linspace(0, a.size, min(n_points, a.size + 1)).round().astype(int))
    return idx / a.size, cum[idx]


def bootstrap_ci(
    x: np.ndarray,
    y: np.ndarray,
    stat: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y)`` resampling (x, y) pairs with replacement.

    Resamples on which the statistic is undefined (NaN, e.g. all pairs identical) are dropped.
    """
    a, b = _flat(x, "x"), _flat(y, "y")
    if a.size < 3 or n_boot <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, a.size, a.size)
        v = stat(a[i], b[i])
        if np.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def robust_scale(values: np.ndarray | list[float]) -> float:
    """Median absolute value: the noise level unit for thresholds ``k * median|score|``."""
    a = np.abs(_flat(values))
    return float(np.median(a)) if a.size else float("nan")
