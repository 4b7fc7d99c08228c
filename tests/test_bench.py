"""The benchmark's summaries: per-round ratios and the split into the machine's memory phases."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adamkit import bench


def test_per_round_ratio_is_not_a_ratio_of_medians() -> None:
    # contestant a is 10 % slower than b in every round, but the rounds alternate between phases
    b = [1.0, 2.0, 1.0, 2.0, 2.0]
    times = {"a": [1.1 * x for x in b], "b": b}
    assert abs(bench.per_round_ratio(times, "a", "b") - 1.1) < 1e-12
    assert abs(bench.per_round_ratio(times, "a", "b", rounds=[0, 2]) - 1.1) < 1e-12


@settings(max_examples=50, deadline=None)
@given(
    fast=st.lists(st.floats(1.0, 1.04), min_size=2, max_size=12),
    slow=st.lists(st.floats(1.6, 1.7), min_size=2, max_size=12),
    seed=st.randoms(use_true_random=False),
)
def test_memory_phases_separates_two_speeds(fast, slow, seed) -> None:
    floor = fast + slow
    seed.shuffle(floor)
    times = {"floor": floor, "kernel": [1.05 * x if x < 1.5 else 1.2 * x for x in floor]}
    phases = bench.memory_phases(times, "floor")
    assert sorted(phases) == ["fast memory phase", "slow memory phase"]
    assert [floor[i] for i in phases["fast memory phase"]] == [x for x in floor if x < 1.5]
    assert abs(bench.per_round_ratio(times, "kernel", "floor", phases["fast memory phase"]) - 1.05) < 1e-9
    assert abs(bench.per_round_ratio(times, "kernel", "floor", phases["slow memory phase"]) - 1.2) < 1e-9


@given(st.lists(st.floats(1.0, 1.08), min_size=1, max_size=20))
def test_one_phase_is_not_split(floor) -> None:
    assert bench.memory_phases({"floor": floor}, "floor") == {}
