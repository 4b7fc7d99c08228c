"""The rules a referee checks: margins from one table, the horizon gate, tuning seeds apart from
evaluation seeds, the grid-neighbour check, and no verdict in quick mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from adamkit.reproduce import EXPERIMENTS, margins, stats, tuning
from adamkit.reproduce.common import (
    HORIZON_NOT_REACHED, INCONCLUSIVE, NO_VERDICT, NOT_REPRODUCED, REPRODUCED, Claim, Measure, comparative_claim, target_gaps,
)
from adamkit.reproduce.runner import Runner


def _interval(low, high):
    return stats.Interval("x", (low + high) / 2, low, high, 8)


def test_margins_are_read_from_the_one_table(monkeypatch):
    inside = _interval(-0.3, 0.3)  # within a factor 1.5 (0.405), not within a factor 1.2
    assert margins.outcome(margins.ABOUT_EQUAL, inside) is True
    monkeypatch.setitem(margins.MARGINS, margins.ABOUT_EQUAL, math.log(1.2))
    assert margins.outcome(margins.ABOUT_EQUAL, inside) is None
    # no experiment keeps a margin of its own: every comparative part names a kind of the table
    for module in EXPERIMENTS.values():
        assert not hasattr(module, "TOLERANCE"), module.NAME
        for kind, _, _ in getattr(module, "PARTS", []):
            assert kind in margins.MARGINS


@given(st.floats(-5, 5), st.floats(0, 3))
def test_directional_claims_are_refuted_only_by_a_whole_interval_on_the_wrong_side(centre, width):
    interval = _interval(centre - width, centre + width)
    outcome = margins.outcome(margins.AHEAD, interval)
    assert outcome is (True if interval.low > 0 else False if interval.high < 0 else None)
    well = margins.outcome(margins.WELL_AHEAD, interval)
    m = margins.MARGINS[margins.WELL_AHEAD]
    assert well is (True if interval.low > m else False if interval.high < m else None)


def test_margin_scales_change_the_threshold():
    interval = _interval(0.25, 0.3)
    assert margins.outcome(margins.ABOUT_EQUAL, interval, 0.5) is False  # outside ±0.20
    assert margins.outcome(margins.ABOUT_EQUAL, interval, 1.0) is True
    assert margins.outcome(margins.ABOUT_EQUAL, interval, 2.0) is True


def _record(name, value, seed):
    return {"name": name, "value": value, "seed": seed}


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 50), st.integers(1, 8), st.integers(1, 3))
def test_tuning_and_evaluation_seeds_are_disjoint(offset, n_seeds, n_tuning):
    seeds = list(range(offset, offset + n_seeds))
    make = lambda name, value, seed: {"name": name, "value": value, "seed": seed}  # noqa: E731
    score = lambda r: (math.log10(r["value"]) + 2) ** 2  # noqa: E731  (optimum at 1e-2)
    comparison = tuning.tuned_comparison(Runner(1), _record, make, score, {"a": 1e-2}, seeds, n_tuning)
    tuned_on = {s for c in comparison.curves.values() for s in c.seeds}
    evaluated_on = {r["seed"] for rs in comparison.runs.values() for r in rs}
    assert evaluated_on == set(seeds) and len(tuned_on) == n_tuning
    assert not tuned_on & evaluated_on
    # nor does a second run with other evaluation seeds tune on the first run's seeds
    other = tuning.tuning_seeds(list(range(offset + n_seeds, offset + 2 * n_seeds)), n_tuning)
    assert not set(other) & set(seeds) and not set(other) & tuned_on


def _curve_run(name, value, seed, *, rates, steps=40):
    """A loss curve e^{−rate·t}·(1 + noise) whose rate depends on the optimizer, flat after ``steps``."""
    rng = np.random.default_rng(seed)
    rate = rates[name] * math.exp(-math.log(value / 1e-2) ** 2)  # best at 1e-2
    ticks = list(range(steps + 20))
    losses = [max(math.exp(-rate * t), math.exp(-rate * steps)) * (1 + 0.01 * rng.random()) for t in ticks]
    return {"ticks": ticks, "losses": losses}


def _comparison(rates, steps=40):
    from functools import partial

    fn = partial(_curve_run, rates=rates, steps=steps)
    make = lambda name, value, seed: {"name": name, "value": value, "seed": seed}  # noqa: E731
    return tuning.tuned_comparison(Runner(1), fn, make, lambda r: stats.tail_mean(r["losses"]), {n: 1e-2 for n in rates},
                                   list(range(6)), 1)


def test_a_faster_optimizer_is_judged_over_the_whole_curve_and_checked_at_grid_neighbours():
    comparison = _comparison({"Adam": 0.4, "Rival": 0.1})
    claim = comparative_claim(comparison, ["Adam", "Rival"], [(margins.AHEAD, "Rival", "Adam")], target_gaps,
                              quantity="log steps", setting="lr", steps=60, paper_steps=None,
                              key="k", statement="s", paper_ref="r", paper_statement="p")
    assert claim.gate["met"]
    assert claim.neighbours is not None and len(claim.neighbours["checked"]) == 4
    assert claim.verdict == REPRODUCED
    assert claim.intervals[0].estimate > math.log(2)  # four times the rate: the target reached much sooner


def test_the_horizon_gate_withholds_the_verdict_on_curves_still_falling():
    comparison = _comparison({"Adam": 0.01, "Rival": 0.005}, steps=10_000)  # both still falling at the end
    claim = comparative_claim(comparison, ["Adam", "Rival"], [(margins.AHEAD, "Rival", "Adam")], target_gaps,
                              quantity="log steps", setting="lr", steps=60, paper_steps=1000,
                              key="k", statement="s", paper_ref="r", paper_statement="p")
    assert stats.combine(claim.holds) is True  # the rule alone would say "reproduced" ...
    assert claim.verdict == HORIZON_NOT_REACHED  # ... but nobody has finished the race
    assert "horizon" in claim.reason and claim.neighbours is None


def test_a_verdict_that_changes_at_a_grid_neighbour_is_withheld():
    claim = Claim("k", "s", "r", "p", {"m": Measure([1.0])}, "rule", [_interval(0.1, 0.2)], True,
                  neighbours={"held": False, "checked": ["x"], "changed": ["Adam at lr = 0.02: not reproduced"]})
    assert claim.verdict == INCONCLUSIVE and "grid neighbour" in claim.reason


def test_quick_mode_gives_numbers_but_no_verdict():
    claim = Claim("k", "s", "r", "p", {"m": Measure([1.0])}, "rule", [_interval(0.1, 0.2)], False, quick=True)
    assert claim.verdict == NO_VERDICT and claim.verdict_at(True) == NO_VERDICT
    claim.quick = False
    assert claim.verdict == NOT_REPRODUCED


def _document(seeds, values, verdict="reproduced", gate_met=True):
    interval = {"statistic": "ahead: log steps Rival / Adam", "estimate": float(np.mean(values)), "low": 0.0, "high": 1.0,
                "level": 0.95, "n": len(values), "values": list(values), "text": "", "coverage": None}
    claim = {"key": "k", "verdict": verdict, "intervals": [interval], "neighbours": {"held": True, "checked": [], "changed": []},
             "steps": 1000, "paper_steps": 20000, "horizon": {"met": gate_met}, "statement": "Rival behind Adam", "kind": "paper claim",
             "paper": {"reference": "Paper (2015), Sec. 1", "statement": "p"}, "margin": f"{margins.AHEAD}: {margins.describe(margins.AHEAD)}"}
    return {"seeds": list(seeds), "claims": [claim]}


def test_pooling_two_seed_sets_judges_the_joined_values_again():
    from adamkit.reproduce import pool

    rng = np.random.default_rng(0)
    first, second = _document(range(8), rng.normal(0.05, 0.1, 8), "inconclusive"), _document(range(8, 16), rng.normal(0.3, 0.1, 8))
    row = pool.pool(first, second)[0]
    joined = stats.bootstrap_interval(first["claims"][0]["intervals"][0]["values"] + second["claims"][0]["intervals"][0]["values"], "x")
    assert row["pooled"] == (REPRODUCED if joined.low > 0 else INCONCLUSIVE)
    assert row["intervals"][0].startswith(joined.text().split(" [")[0])
    with pytest.raises(ValueError):
        pool.pool(first, _document(range(4, 12), [0.1] * 8))


def test_the_pooled_table_shows_each_runs_horizon_gate():
    from adamkit.reproduce import pool

    first, second = _document(range(8), [0.1] * 8), _document(range(8, 16), [0.2] * 8, gate_met=False)
    table = pool.markdown(pool.pool(first, second), first, second)
    assert "horizon 1,000 steps (paper 20,000), gate met in the first run only" in table
    assert "| Rival behind Adam (Paper (2015), Sec. 1) |" in table and "| ahead: above 0 |" in table  # the claim, its source and margin
    both = pool.markdown(pool.pool(first, _document(range(8, 16), [0.2] * 8)), first, second)
    assert "gate met in both runs" in both
