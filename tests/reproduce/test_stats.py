"""The statistics every verdict rests on, against independent references (scipy) and as properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from adamkit.reproduce import stats
from adamkit.reproduce.common import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, verdict

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=2, max_size=12))
def test_bootstrap_interval_contains_the_sample_mean(values):
    interval = stats.bootstrap_interval(values, "mean", resamples=2000)
    slack = 1e-9 * (1 + max(abs(v) for v in values))
    assert interval.low - slack <= np.mean(values) <= interval.high + slack
    assert min(values) - slack <= interval.low <= interval.high <= max(values) + slack


@pytest.mark.parametrize("n", [5, 8, 20])
def test_expanded_bootstrap_interval_is_as_wide_as_the_t_interval(n):
    # Hesterberg's expanded percentile interval is built to match the t interval's width; for normal
    # data the two agree closely (the plain percentile interval would be ~1.6x narrower at n = 5)
    scipy_stats = pytest.importorskip("scipy.stats")
    values = np.random.default_rng(n).normal(1.0, 2.0, size=n)
    ours = stats.bootstrap_interval(values, "mean", resamples=100_000)
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (ours.high - ours.low) == pytest.approx(high - low, rel=0.2)
    plain = scipy_stats.bootstrap((values,), np.mean, method="percentile", n_resamples=20000, random_state=7).confidence_interval
    assert ours.high - ours.low > plain.high - plain.low


def test_expanded_tail_follows_the_t_quantile():
    scipy_stats = pytest.importorskip("scipy.stats")
    assert stats.expanded_tail(5) == pytest.approx(scipy_stats.norm.sf(math.sqrt(5 / 4) * scipy_stats.t.ppf(0.975, 4)))
    assert stats.expanded_tail(5) < 0.001 < 0.025 - 1e-3 < stats.expanded_tail(1000) < 0.025


def test_bootstrap_of_a_diverged_seed_is_unbounded():
    interval = stats.bootstrap_interval([0.1, 0.2, math.inf, 0.15], "mean")
    assert interval.high == math.inf and stats.below(interval, 1.0) is None


@given(finite, finite, finite)
def test_rule_outcomes_follow_the_interval(a, b, threshold):
    low, high = min(a, b), max(a, b)
    interval = stats.Interval("x", (low + high) / 2, low, high, 5)
    assert stats.above(interval, threshold) is (True if low > threshold else False if high <= threshold else None)
    assert stats.below(interval, threshold) is (True if high < threshold else False if low >= threshold else None)
    # mirror image: "x > t" on the interval is "−x < −t" on the negated interval
    mirrored = stats.Interval("-x", -(low + high) / 2, -high, -low, 5)
    if low != threshold and high != threshold:
        assert stats.above(interval, threshold) is stats.below(mirrored, -threshold)


@given(finite, finite, st.floats(min_value=0, max_value=1e6))
def test_above_unless_alike_is_refuted_only_beyond_the_band(a, b, tolerance):
    low, high = min(a, b), max(a, b)
    outcome = stats.above_unless_alike(stats.Interval("x", (low + high) / 2, low, high, 5), tolerance)
    assert outcome is (True if low > 0 else False if high < -tolerance else None)
    # inside the band (even wholly below 0) nothing is refuted
    assert stats.above_unless_alike(stats.Interval("x", -0.05, -0.08, -0.02, 5), 0.10) is None
    assert stats.above_unless_alike(stats.Interval("x", -0.3, -0.4, -0.2, 5), 0.10) is False


@given(finite, finite, st.floats(min_value=0, max_value=1e6))
def test_within_is_inconclusive_exactly_when_the_interval_crosses_a_tolerance_edge(a, b, tolerance):
    low, high = min(a, b), max(a, b)
    outcome = stats.within(stats.Interval("x", (low + high) / 2, low, high, 5), tolerance)
    inside = -tolerance <= low and high <= tolerance
    outside = high < -tolerance or low > tolerance
    assert outcome is (True if inside else False if outside else None)


def test_combine_and_verdicts():
    assert stats.combine(True, True) is True
    assert stats.combine(True, None) is None
    assert stats.combine(None, False) is False
    assert verdict(None) == INCONCLUSIVE and verdict(True) == REPRODUCED and verdict(False, defect=True) == NOT_REPRODUCED


@given(st.lists(st.floats(min_value=0, max_value=1e3), min_size=1, max_size=60))
def test_tail_mean_is_the_mean_of_the_last_tenth(curve):
    count = max(1, int(round(0.1 * len(curve))))
    assert stats.tail_mean(curve) == pytest.approx(float(np.mean(curve[-count:])))
    assert stats.tail_mean(curve + [math.inf]) == math.inf


def test_flattening_criterion():
    flat = [10.0, 5.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.99, 0.99]
    falling = [10.0 * 0.7**k for k in range(10)]
    assert stats.horizon_record(flat)["flattened"] is True
    assert stats.horizon_record(falling)["flattened"] is False


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=80))
def test_mcnemar_matches_scipy_binomial_test(pairs):
    scipy_stats = pytest.importorskip("scipy.stats")
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    result = stats.mcnemar_exact(a, b)
    n = result["a_right_b_wrong"] + result["a_wrong_b_right"]
    expected = 1.0 if n == 0 else scipy_stats.binomtest(result["a_right_b_wrong"], n, 0.5).pvalue
    assert result["p_value"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_bootstrap_statistic_of_a_slope():
    x = np.log10([1e-3, 3e-3, 1e-2])
    rows = np.array([[2 * xi + e for xi in x] for e in (0.0, 0.01, -0.01, 0.02, -0.02)])
    interval = stats.bootstrap_statistic(len(rows), lambda idx: float(np.polyfit(x, rows[idx].mean(axis=0), 1)[0]), "slope")
    assert interval.estimate == pytest.approx(2.0)
    assert interval.low <= 2.0 <= interval.high


def test_paired_differences():
    assert stats.relative_differences([2.0, 3.0], [1.0, 3.0]) == [1.0, 0.0]
    assert stats.relative_differences([math.inf], [1.0]) == [math.inf]
    assert stats.log_ratios([2.0], [1.0]) == [pytest.approx(math.log(2))]
    with pytest.raises(ValueError):
        stats.relative_differences([1.0], [1.0, 2.0])
