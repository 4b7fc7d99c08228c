"""Independent checks of the pieces each experiment's verdict rests on (the quick run exercises the experiments end to end)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import adamkit
from adamkit.reproduce import (
    amsgrad_online, annealing, bias_correction, generalization, invariance, little_tuning, logistic, nonstationary, step_bound, weight_decay,
)
from adamkit.reproduce.common import INCONCLUSIVE, REPRODUCED, Claim, Measure
from adamkit.reproduce.stats import Interval
from adamkit.reproduce.tuning import TuningCurve


pytestmark = pytest.mark.usefixtures("one_thread")


# -- claims --------------------------------------------------------------------------------


def _claim(holds, bracketed=True):
    curve = TuningCurve("Adam", "α", [1.0, 2.0, 4.0], [2.0, 1.0, 3.0 if bracketed else 0.5], [[2.0], [1.0], [3.0]], [0],
                        2.0 if bracketed else 4.0, bracketed)
    return Claim("k", "s", "ref", "statement", {"m": Measure([1.0])}, "rule", [Interval("x", 1.0, 0.5, 1.5, 5)], holds, tuning=[curve])


def test_a_claim_on_an_unbracketed_optimum_gets_no_verdict():
    assert _claim(True).verdict == REPRODUCED
    assert _claim(True, bracketed=False).verdict == INCONCLUSIVE
    assert "not bracketed" in _claim(True, bracketed=False).reason
    assert _claim(None).verdict == INCONCLUSIVE


# -- Reddi et al. ------------------------------------------------------------------------------


def test_online_problem_first_step_and_regret():
    sim = amsgrad_online.simulate(300, [0], alpha=0.5, deterministic=True)
    # step 1: gradient 1010, bias-corrected m̂/√v̂ = 1, so x moves by α_1 = 0.5 (up to ε).
    assert sim["adam"][1, 0] == pytest.approx(-0.5, abs=1e-9)
    assert sim["amsgrad"][1, 0] == pytest.approx(-0.5, abs=1e-9)
    x, g = sim["adam"][:, 0], sim["grads"][:, 0]
    grid = np.linspace(-1, 1, 201)
    t = 250
    brute = (np.sum(g[:t] * x[:t]) - min(np.sum(g[:t] * z) for z in grid)) / t
    assert amsgrad_online.average_regret(x, g)[t - 1] == pytest.approx(brute, rel=1e-9)


def test_stochastic_problem_draws_the_large_gradient_with_probability_one_in_a_hundred():
    grads = amsgrad_online._gradients(0, 200_000, [torch.Generator().manual_seed(5)], deterministic=False)
    frequency = float((grads == amsgrad_online.BIG).double().mean())
    assert frequency == pytest.approx(0.01, abs=0.0015)
    # expected loss 0.2 x: optimum −1, excess 0.2 (x + 1)
    assert amsgrad_online.excess([-1.0, -1.0]) == 0.0 and amsgrad_online.excess([1.0]) == pytest.approx(0.4)


# -- Wilson et al. ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 12, 30])
def test_wilson_construction_has_the_sign_property(n):
    x, y = generalization.wilson_data(n, 0.7, np.random.default_rng(n), n_positive=math.ceil(0.7 * n))
    assert x.shape == (n, 3 + 5 * n)
    np.testing.assert_array_equal(x @ np.sign(x.T @ y), 4 * y)  # X sign(Xᵀy) = 4y (Wilson et al., Sec. 3.3)


def test_wilson_minimum_norm_solution_classifies_correctly():
    x, y = generalization.wilson_data(20, 0.7, np.random.default_rng(0), n_positive=14)
    w = np.linalg.pinv(x) @ y  # what gradient descent from 0 converges to
    y_test = np.array([1.0, -1.0] * 50)
    assert generalization.test_error(w, y_test) == 0.0
    assert generalization.test_error(np.sign(x.T @ y) / 4, y_test) == 0.5  # the adaptive solution


# -- weight decay -------------------------------------------------------------------------------------


def test_refined_minimum_finds_a_parabola_vertex_between_grid_points():
    values = [1e-4 * 2.0**k for k in range(7)]
    vertex = math.log10(3e-4)
    scores = np.array([(math.log10(v) - vertex) ** 2 + 1.0 for v in values])
    assert weight_decay.refined_minimum(values, scores) == pytest.approx(vertex, abs=1e-9)
    assert weight_decay.refined_minimum(values, scores[::-1].copy()) != pytest.approx(vertex)  # edge case handled, no crash
    assert weight_decay.slope([1e-3, 1e-2, 1e-1], [-4.0, -5.0, -6.0]) == pytest.approx(-1.0)


def test_quadratic_fixed_points_match_the_closed_form():
    finals = weight_decay.quadratic_fixed_points(3000)
    assert weight_decay.rule_quadratic(finals)


# -- invariance, step bound, little tuning, annealing, non-stationarity, bias correction ----------------


def test_deviation_is_relative_to_distance_travelled():
    reference = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    run = reference + np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.4]])
    np.testing.assert_allclose(invariance.deviation(run, reference), [0.0, 0.05, 0.1])


def test_stated_bound_is_kingma_and_ba_worst_case_at_the_defaults():
    assert step_bound.STATED == pytest.approx(0.1 / math.sqrt(0.001))
    assert step_bound.STATED == pytest.approx(3.1623, abs=1e-4)


def test_constructed_gradient_sequence_attains_the_rigorous_bound_and_exceeds_the_stated_one():
    # Cauchy-Schwarz is an equality for g_(t-k) proportional to (beta1/beta2)^k: Adam's last step is
    # the rigorous bound itself, about 2.2x K&B's stated worst case at the defaults.
    worst = step_bound.constructed_worst_case()
    assert worst["ratio"] == pytest.approx(worst["bound"], rel=1e-6)
    assert worst["ratio"] > 2.0 * step_bound.STATED


def test_good_width_interpolates_the_ends_and_flags_edges():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]  # one decade apart
    # best 0.5 at 1e-3, tolerance line 0.75: on the left, log loss falls from log 1 to log 0.5 over a
    # decade and crosses log 0.75 at log(1.5)/log(2) of the way from 1e-3; on the right it rises from
    # log 0.6 (good) to log 2 and crosses at log(1.25)/log(2/0.6) of the way from 1e-2.
    width, inside = little_tuning.good_width(lrs, [1.0, 0.5, 0.6, 2.0])
    assert inside
    assert width == pytest.approx(1.0 + math.log(1.5) / math.log(2.0) + math.log(1.25) / math.log(2.0 / 0.6))
    # a diverged neighbour ends the range at the last good point; a good point beyond a bad one is not in the range
    assert little_tuning.good_width(lrs + [1.0], [2.0, 0.5, 0.7, math.inf, 0.6]) == (pytest.approx(1.0 + math.log(1.5) / math.log(4.0)), True)
    assert little_tuning.good_width(lrs, [0.5, 0.6, 2.0, 3.0])[1] is False  # touches the lower edge


def test_annealing_windows_are_defined_by_state():
    steps = 6000
    excess = np.concatenate([np.full(1500, 50.0), np.full(steps - 1500, 0.001)])
    effective = np.concatenate([np.full(1500, 0.4), np.full(steps - 1500, 0.1)])
    result = {"effective": effective.tolist(), "excess": excess.tolist(), "initial": 100.0}
    far, near = annealing.windows(result, steps)
    assert far == pytest.approx(0.4) and near == pytest.approx(0.1)
    # a budget that ends before v̂ has forgotten the approach has no near window
    assert math.isnan(annealing.windows(result, 3000)[1])


def test_recovery_time():
    phase = np.array([100.0, 50.0, 10.0, 0.9, 0.5])
    assert nonstationary.recovery_time(phase) == 4.0
    assert nonstationary.recovery_time(np.array([100.0, 90.0])) == 2.0  # never: censored at the phase length


def test_bias_correction_loss_at_a_budget():
    result = {"losses": [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5], "eval_every": 10}
    assert bias_correction.loss_at(result, 40) == 6.0  # evaluations at steps 0..40: the last 10 % is one point
    assert bias_correction.loss_at({"losses": [10.0, math.inf], "eval_every": 10}, 10) == math.inf


# -- the papers' regimes: bias correction's grid, weight decay with BatchNorm, generalization with decay --------------


def test_bias_correction_covers_the_papers_grid():
    grid = bias_correction.candidates(bias_correction.Settings.full().beta2s)
    assert sorted({b2 for _, b2, _ in grid.values()}) == [0.99, 0.999, 0.9999]  # K&B Sec. 6.4
    assert len(grid) == 12 and {(b1, c) for b1, _, c in grid.values()} == {(0.0, True), (0.0, False), (0.9, True), (0.9, False)}
    assert set(bias_correction.CLOSE_TO_ONE) < set(bias_correction.BETA2S)


def test_logistic_regression_at_a_weaker_l2_runs_as_long_as_its_conditioning_needs():
    settings = logistic.Settings.full()
    weak, main, strong = sorted([settings.l2, *settings.sensitivity])
    assert settings.steps_at(main) == settings.steps_at(strong)
    # κ grows as 1/λ and momentum methods need √κ as many steps: λ/10 runs at least √10 times as long
    assert settings.steps_at(weak) >= math.sqrt(main / weak) * settings.steps_at(main)
    kwargs = logistic._kwargs("Adam", 1e-2, 0, settings=settings, l2=weak)
    assert kwargs["epochs"] * math.ceil(settings.n_train / settings.batch_size) == settings.steps_at(weak)


def test_weight_decay_runs_a_batchnorm_network_over_two_decades():
    settings = weight_decay.Settings.full()
    assert max(settings.lrs) / min(settings.lrs) >= 100
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in weight_decay.bn_network(8))


def test_generalization_schedule_and_adamw_total_decay():
    assert generalization.schedule_sum(20) == pytest.approx(10 + 5 * 0.1 + 5 * 0.01)
    # an unused weight (zero gradient) under AdamW shrinks by about e^(−total) over the whole schedule
    epochs, per_epoch, total = 8, 25, 1.0
    p = torch.nn.Parameter(torch.ones(1))
    optimizer = adamkit.AdamW([p], lr=1e-3, weight_decay=generalization.adamw_lambda(total, epochs, per_epoch), decoupled_lr=True)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [round(f * epochs) for f in generalization.DECAY_AT], gamma=0.1)
    for _ in range(epochs):
        for _ in range(per_epoch):
            p.grad = torch.zeros(1)
            optimizer.step()
        schedule.step()
    assert float(p) == pytest.approx(math.exp(-total), rel=0.05)


def test_bias_correction_reason_names_the_parts_that_decide():
    parts = {"interval": True, "β2 close to 1": None, "stable α": False}
    assert bias_correction.explain(parts).startswith("fails: stable α (")
    assert bias_correction.explain({**parts, "stable α": True}).startswith("undecided: β2 close to 1 (")
    assert bias_correction.explain(dict.fromkeys(parts, True)).startswith("all 3 parts hold: interval; β2 close to 1; stable α (")
