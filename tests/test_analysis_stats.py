"""Across-seed statistics (Student-t intervals, the sign test) against closed forms, printed
table values and brute force; no scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from magic_unlearn.analysis.stats import (
    betainc,
    mean_ci,
    paired_diff,
    sign_test,
    t_cdf,
    t_ppf,
)

PS = (0.6, 0.75, 0.9, 0.95, 0.975, 0.99, 0.995, 0.9995)


def test_betainc_special_cases():
    for x in (0.0, 0.1, 0.37, 0.5, 0.8, 1.0):
        assert betainc(1, 1, x) == pytest.approx(x, abs=1e-14)
        assert betainc(3.5, 1, x) == pytest.approx(x**3.5, abs=1e-13)
        assert betainc(1, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-13)
        for a, b in ((0.5, 4.0), (2.0, 7.5), (12.0, 0.5)):
            assert betainc(a, b, x) == pytest.approx(1 - betainc(b, a, 1 - x), abs=1e-13)
    assert betainc(6.0, 6.0, 0.5) == pytest.approx(0.5, abs=1e-14)
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        betainc(1, 1, 1.5)


def test_t_cdf_closed_forms():
    for t in (-7.0, -1.3, 0.0, 0.4, 2.0, 25.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
        u = t / math.sqrt(3)
        df3 = 0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi
        assert t_cdf(t, 3) == pytest.approx(df3, abs=1e-13)
        normal = 0.5 * math.erfc(-t / math.sqrt(2))
        assert t_cdf(t, math.inf) == pytest.approx(normal, abs=1e-15)


def test_t_ppf_closed_forms_df_1_2_4():
    for p in PS + tuple(1 - p for p in PS):
        assert t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
        assert t_ppf(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
        a = 4 * p * (1 - p)
        q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
        t4 = math.copysign(2 * math.sqrt(q - 1), p - 0.5)
        assert t_ppf(p, 4) == pytest.approx(t4, rel=1e-9)
    assert t_ppf(0.5, 7) == 0.0


def test_t_ppf_table_values():
    # printed Student-t tables (two-sided 95% / 99%) and the normal quantile
    assert t_ppf(0.975, 9) == pytest.approx(2.262157, abs=1e-6)
    assert t_ppf(0.975, 29) == pytest.approx(2.045230, abs=1e-6)
    assert t_ppf(0.995, 10) == pytest.approx(3.169273, abs=1e-6)
    assert t_ppf(0.975, 1000) == pytest.approx(1.962339, abs=1e-6)
    assert t_ppf(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)
    for df in (1, 3, 8, 40):  # the inverse of the CDF
        for p in PS:
            assert t_cdf(t_ppf(p, df), df) == pytest.approx(p, abs=1e-12)


def test_mean_ci_by_hand_and_edge_cases():
    c = mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert (c.mean, c.sd, c.n) == (2.0, 1.0, 3)
    assert c.lo == pytest.approx(2 - half, abs=1e-12) and c.hi == pytest.approx(2 + half)
    one = mean_ci([0.4])
    assert one.mean == 0.4 and one.n == 1 and math.isnan(one.lo) and math.isnan(one.hi)
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([1.0, float("nan")])


def test_mean_ci_covers_at_its_level():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5):
        hits = 0
        reps = 4000
        for _ in range(reps):
            c = mean_ci(rng.normal(1.5, 2.0, size=n))
            hits += c.lo <= 1.5 <= c.hi
        assert abs(hits / reps - 0.95) < 0.012, (n, hits / reps)


def test_sign_test_known_values_and_brute_force():
    assert sign_test([0.1, 0.2, 0.3]) == (0.25, 3, 0)
    assert sign_test([1.0] * 9 + [-1.0]) == (pytest.approx(22 / 1024), 9, 1)
    assert sign_test([1.0, -1.0])[0] == 1.0
    assert sign_test([0.0, 0.0, 2.0]) == (1.0, 1, 0)  # zeros dropped: one sign left
    assert sign_test([0.0, 0.0]) == (1.0, 0, 0)
    for n in range(1, 11):
        for k in range(n + 1):
            # brute force: share of the 2^n sign patterns at least as unbalanced as k of n
            extreme = min(k, n - k)
            count = sum(
                min(sum(s), n - sum(s)) <= extreme for s in itertools.product((0, 1), repeat=n)
            )
            p, pos, neg = sign_test([1.0] * k + [-1.0] * (n - k))
            assert (pos, neg) == (k, n - k)
            assert p == pytest.approx(min(1.0, count / 2**n), abs=1e-15)


def test_paired_diff():
    d = paired_diff([0.5, 0.7, 0.9], [0.4, 0.5, 0.6])
    np.testing.assert_allclose(d.diffs, [0.1, 0.2, 0.3])
    ref = mean_ci([0.1, 0.2, 0.3])
    assert d.ci.mean == pytest.approx(ref.mean) and d.ci.lo == pytest.approx(ref.lo)
    assert (d.sign_p, d.n_positive, d.n_negative) == (0.25, 3, 0)
    assert d.to_dict()["sign_test_p"] == 0.25
    with pytest.raises(ValueError, match="pairs must match"):
        paired_diff([1.0], [1.0, 2.0])
