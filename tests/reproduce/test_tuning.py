"""The bracketed tuner on synthetic tuning curves whose optimum is known."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from adamkit.reproduce import tuning
from adamkit.reproduce.runner import Runner


def parabola(name: str, value: float, seed: int, optimum: float) -> float:
    """A tuning curve with its minimum at ``optimum`` (quadratic in log10 of the value)."""
    return 1.0 + (math.log10(value) - math.log10(optimum)) ** 2


def monotone(name: str, value: float, seed: int) -> float:
    """A tuning curve with no minimum: larger is always better."""
    return 1.0 / value


def diverges_above(name: str, value: float, seed: int, limit: float) -> float:
    return math.inf if value > limit else 1.0 / value


@settings(max_examples=25)
@given(st.floats(min_value=-6, max_value=2), st.floats(min_value=-6, max_value=2))
def test_tuner_brackets_a_known_optimum_with_equal_trials(log_a, log_b):
    optima = {"a": 10**log_a, "b": 10**log_b}
    make = lambda name, value, seed: {"name": name, "value": value, "seed": seed, "optimum": optima[name]}  # noqa: E731
    curves, _ = tuning.tune(Runner(1), parabola, make, lambda r: r, {"a": 1e-3, "b": 1e-2}, [0, 1], factor=2.0, max_points=40)
    for name, curve in curves.items():
        assert curve.bracketed
        assert abs(math.log2(curve.chosen / optima[name])) <= 0.5 + 1e-9  # within half a grid step
        i = curve.values.index(curve.chosen)
        assert curve.scores[i - 1] > curve.scores[i] < curve.scores[i + 1]
    assert len(curves["a"].values) == len(curves["b"].values)  # the same number of trials per candidate


def test_monotone_curve_is_reported_unbracketed():
    make = lambda name, value, seed: {"name": name, "value": value, "seed": seed}  # noqa: E731
    curves, _ = tuning.tune(Runner(1), monotone, make, lambda r: r, {"x": 1.0}, [0], max_points=8)
    assert not curves["x"].bracketed and curves["x"].chosen == max(curves["x"].values)
    assert len(curves["x"].values) == 8
    assert tuning.unbracketed(curves) == ["x"]


def test_divergence_counts_as_worse():
    make = lambda name, value, seed: {"name": name, "value": value, "seed": seed, "limit": 0.3}  # noqa: E731
    curves, _ = tuning.tune(Runner(1), diverges_above, make, lambda r: r, {"x": 1.0}, [0])
    curve = curves["x"]
    assert curve.bracketed and curve.chosen <= 0.3
    assert math.isinf(curve.scores[curve.values.index(curve.chosen) + 1])


def test_bracketed_and_extension_helpers():
    assert tuning.bracketed([3.0, 1.0, 2.0]) and not tuning.bracketed([1.0, 2.0, 3.0])
    assert not tuning.bracketed([2.0, 1.0, 1.0])  # a tie is not a worse neighbour
    assert tuning.extension([1.0, 2.0, 4.0], [3.0, 2.0, 1.0], 2.0) == 8.0
    assert tuning.extension([1.0, 2.0, 4.0], [1.0, 2.0, 3.0], 2.0) == 0.5
    assert tuning.extension([1.0, 2.0, 4.0], [math.inf] * 3, 2.0) == 0.5
    with pytest.raises(ValueError):
        tuning.tune(Runner(1), monotone, lambda n, v, s: {}, lambda r: r, {"x": 1.0}, [0], factor=10.0)


def test_runner_returns_results_in_submission_order_whatever_finishes_first():
    from helpers import value_after

    # the first job finishes last: results must still come back in the order the runs were given
    with Runner(2) as runner:
        assert runner.map(value_after, [{"value": 0, "seconds": 1.0}, {"value": 1, "seconds": 0.0}, {"value": 2, "seconds": 0.0}]) == [0, 1, 2]
