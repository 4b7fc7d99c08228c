"""The statistics every verdict rests on, against independent references (scipy) and as properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from adamkit.reproduce import stats
from adamkit.reproduce.common import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, verdict

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=2, max_size=12))
@example([0.0, 0.0, 6.261095901003977e-258])  # a second moment that underflows: skewness 0/0 before
def test_bootstrap_interval_contains_the_sample_mean(values):
    interval = stats.bootstrap_interval(values, "mean", resamples=2000)
    slack = 1e-9 * (1 + max(abs(v) for v in values))
    assert interval.low - slack <= np.mean(values) <= interval.high + slack
    assert interval.low <= interval.high


@pytest.mark.parametrize("scale", [1e-258, 1.0, 1e250])
def test_skewness_does_not_depend_on_scale(scale):
    scipy_stats = pytest.importorskip("scipy.stats")
    values = np.array([0.0, 0.0, 1.0, 3.0, 0.5])
    assert stats.skewness(values * scale) == pytest.approx(scipy_stats.skew(values, bias=False), rel=1e-12)


@pytest.mark.parametrize("n", [5, 8, 20])
def test_bootstrap_t_interval_is_about_as_wide_as_the_t_interval_for_normal_values(n):
    # for normal values the studentized bootstrap approximates the t interval (Efron & Tibshirani 1993, Ch. 12)
    scipy_stats = pytest.importorskip("scipy.stats")
    values = np.random.default_rng(n).normal(1.0, 2.0, size=n)
    ours = stats.bootstrap_interval(values, "mean", resamples=100_000, check_coverage=False)
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (ours.high - ours.low) == pytest.approx(high - low, rel=0.35)
    plain = scipy_stats.bootstrap((values,), np.mean, method="percentile", n_resamples=20000, random_state=7).confidence_interval
    assert ours.high - ours.low > plain.high - plain.low


def test_bootstrap_t_interval_leans_toward_the_long_tail():
    # a right-skewed sample: the studentized interval reaches further above the mean than below it
    values = np.random.default_rng(3).lognormal(0.0, 1.0, size=12)
    interval = stats.bootstrap_interval(values, "mean", check_coverage=False)
    assert interval.high - interval.estimate > interval.estimate - interval.low


def test_interval_coverage_is_checked_by_simulation_at_a_small_size():
    # the check every reported interval carries, here at a size the suite affords; compared with an
    # independent simulation of the t interval (scipy) on the same kind of samples
    scipy_stats = pytest.importorskip("scipy.stats")
    normal = stats.coverage(8, 0.0, replications=300, resamples=400, seed=1)
    skewed = stats.coverage(8, 6.0, replications=300, resamples=400, seed=1)
    assert 0.88 <= normal <= 0.99
    rng = np.random.default_rng(1)
    sigma = 1.0  # lognormal skewness (e + 2)·√(e − 1) ≈ 6.2
    truth = math.exp(sigma**2 / 2)
    t_hits = 0
    for _ in range(300):
        sample = rng.lognormal(0.0, sigma, 8)
        low, high = scipy_stats.t.interval(0.95, 7, loc=sample.mean(), scale=scipy_stats.sem(sample))
        t_hits += low <= truth <= high
    assert skewed < normal  # skew costs coverage ...
    assert skewed >= t_hits / 300 - 0.03  # ... but less than for the t interval
    assert stats.bootstrap_interval(np.random.default_rng(0).normal(size=6), "x").coverage is not None


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


def test_horizon_gate_blocks_a_curve_still_falling():
    flat = [10.0, 5.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.99, 0.99]
    falling = [10.0 * 0.7**k for k in range(10)]  # 1 − 0.7² = 51 % over the last 20 %
    assert stats.horizon_gate({"a": flat, "b": flat}, 100, 1000)["met"] is True
    gate = stats.horizon_gate({"a": flat, "b": falling}, 100, 1000)
    assert gate["met"] is False and gate["improvement"]["b"] == pytest.approx(1 - 0.7**2)
    assert stats.horizon_gate({"a": flat, "b": falling}, 1000, 1000)["met"] is True  # the paper's horizon reached
    assert stats.horizon_gate({"a": falling}, 100, None)["met"] is False


def test_log_excess_gap_and_steps_to_target():
    optimum = 1.0
    better = [3.0, 1.0 + 1e-1, 1.0 + 1e-2]
    worse = [3.0, 1.0 + 1e-0, 1.0 + 1e-1]
    assert stats.log_excess_gap(worse, better, optimum) == pytest.approx(math.log(10))
    ticks = [0, 1, 2, 3, 4]
    curves = {"fast": [5, 2, 1, 0.5, 0.4], "slow": [5, 4, 3, 2, 1]}
    # target: the highest best cost (slow's 1), reached by fast at tick 2 and by slow at tick 4
    assert stats.steps_gaps(curves, ticks, [("slow", "fast")]) == [pytest.approx(math.log(2))]


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
