"""Small, dependency-free statistics (numpy and ``math`` only, no scipy).

Two groups: rank statistics that judge attribution scores (``rankdata``, ``spearman``,
``roc_auc``, ``bootstrap_ci``, ...), and the across-seed statistics of a study
(``t_ppf``, ``mean_ci``: Student-t confidence intervals of a mean; ``sign_test``: the exact
two-sided sign test; ``paired_diff``: both on same-seed differences).

Every function takes flat arrays and refuses NaN input with a clear error, so a broken score file
never turns into a silently wrong correlation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

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


# ---------------------------------------------------------------------------------------------
# across-seed statistics: Student-t intervals and the sign test


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) (continued fraction, modified Lentz;
    Numerical Recipes 6.4), accurate to ~1e-14 for the a, b of a t distribution."""
    if a <= 0 or b <= 0:
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    ln_front += a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use symmetry
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float, eps: float = 1e-15, max_iter: int = 10_000) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
            last = d * c
        if abs(last - 1.0) < eps:
            return h
    raise ArithmeticError(f"betainc continued fraction did not converge (a={a}, b={b}, x={x})")


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (``math.inf``: the normal)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    # P(T > |t|) = I_x(df/2, 1/2) / 2 with x = df / (df + t^2) = 1 - y; through the symmetry
    # I_x(a, b) = 1 - I_y(b, a) when y is small, so a large df does not lose y to rounding
    y = t * t / (df + t * t)
    if y < 0.5:
        tail = 0.5 * (1.0 - betainc(0.5, df / 2.0, y))
    else:
        tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on
    :func:`t_cdf` to ~1e-12; ``df = math.inf``: the standard normal)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_ppf needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
        if hi > 1e12:
            raise ArithmeticError(f"t_ppf({p}, {df}) is beyond 1e12")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass
class MeanCI:
    """Mean of n values with a two-sided Student-t confidence interval.

    ``lo``/``hi`` = mean -/+ t_{(1+level)/2, n-1} * sd / sqrt(n), sd the sample standard
    deviation (n - 1 denominator); NaN when n < 2 (no interval from one value).
    """

    mean: float
    lo: float
    hi: float
    sd: float
    n: int
    level: float = 0.95
    method: str = "student-t"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> MeanCI:
    """:class:`MeanCI` of ``values`` (finite numbers; an empty list gives NaNs and n = 0)."""
    a = _flat(values, "values")
    n = int(a.size)
    if n == 0:
        nan = float("nan")
        return MeanCI(nan, nan, nan, nan, 0, level)
    m = float(a.mean())
    if n < 2:
        return MeanCI(m, float("nan"), float("nan"), float("nan"), 1, level)
    sd = float(a.std(ddof=1))
    half = t_ppf(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return MeanCI(m, m - half, m + half, sd, n, level)


def sign_test(diffs: Sequence[float] | np.ndarray) -> tuple[float, int, int]:
    """Exact two-sided sign test of "the median difference is 0".

    Zero differences are dropped (the usual convention). With n non-zero differences of which
    k are positive, p = min(1, 2 * P(X <= min(k, n - k))), X ~ Binomial(n, 1/2).

    Returns:
        ``(p, n_positive, n_negative)``; p = 1 when every difference is 0.
    """
    a = _flat(diffs, "diffs")
    pos, neg = int((a > 0).sum()), int((a < 0).sum())
    n = pos + neg
    if n == 0:
        return 1.0, 0, 0
    tail = sum(math.comb(n, i) for i in range(min(pos, neg) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail), pos, neg


@dataclass
class PairedDiff:
    """Same-seed differences ``a - b``: their mean with a t interval and the sign test."""

    ci: MeanCI
    sign_p: float
    n_positive: int
    n_negative: int
    diffs: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.ci.mean,
            "lo": self.ci.lo,
            "hi": self.ci.hi,
            "sd": self.ci.sd,
            "n": self.ci.n,
            "level": self.ci.level,
            "ci_method": self.ci.method,
            "sign_test_p": self.sign_p,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "diffs": list(self.diffs),
        }


def paired_diff(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = 0.95
) -> PairedDiff:
    """:class:`PairedDiff` of paired values (``a[i]``, ``b[i]`` from the same seed)."""
    x, y = _flat(a, "a"), _flat(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired_diff: {x.size} values against {y.size}; pairs must match")
    d = x - y
    p, pos, neg = sign_test(d)
    return PairedDiff(mean_ci(d, level), p, pos, neg, [float(v) for v in d])
