"""Each experiment on a tiny size, plus independent checks of the pieces its verdict rests on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import adamkit
from adamkit.reproduce import (
    amsgrad_online, annealing, bias_correction, cnn, generalization, invariance, logistic, mlp, nonstationary,
    report, sparse, step_bound, tuning, weight_decay,
)
from adamkit.reproduce.common import DEFECT_REPRODUCED, NOT_REPRODUCED, REPRODUCED, VERDICTS, Measure, verdict

TINY = {
    logistic: logistic.Settings(epochs=1, grid={"Adam": [1e-2], "Adagrad": [1e-1], "SGD-Nesterov": [1e-1]}),
    mlp: mlp.Settings(hidden=16, n_train=200, epochs=1),
    cnn: cnn.Settings(channels=2, n_train=200, epochs=1),
    bias_correction: bias_correction.Settings(lrs=[1e-2], hidden=16, latent=4, n_train=200, epochs=1),
    amsgrad_online: amsgrad_online.Settings(steps=2000),
    generalization: generalization.Settings(n_train=10, n_test=300, steps=100, p=0.7, mnist_train=200, mnist_val=100,
                                            mnist_test=100, hidden=16, epochs=1,
                                            lr_grid={"SGD-momentum": [0.1], "Adam": [1e-3], "AdamW": [1e-3]}),
    weight_decay: weight_decay.Settings(quadratic_steps=3000, lrs=[1e-2, 3e-2], l2_grid=[1e-3, 1e-2], decay_grid=[1e-4, 1e-3],
                                        n_train=100, hidden=8, epochs=1),
    invariance: invariance.Settings(steps=20),
    step_bound: step_bound.Settings(steps=20, hidden=8, n_train=200),
    tuning: tuning.Settings(lrs=[1e-3, 1e-2], n_train=200, hidden=8, epochs=1),
    annealing: annealing.Settings(steps=300),
    nonstationary: nonstationary.Settings(phase_steps=100, grid={"Adam": [1e-2], "Adagrad": [1.0], "RMSprop": [1e-2]}),
    sparse: sparse.Settings(vocabulary=50, documents=100, tokens=5, epochs=1),
}

# Verdicts fixed by mathematics even at the tiny size.
TINY_EXPECTED = {
    "wilson-construction": DEFECT_REPRODUCED,
    "weight-decay-quadratic": REPRODUCED,
    "invariance-rescaling": REPRODUCED,
    "step-bound": REPRODUCED,
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("module", list(TINY), ids=lambda m: m.NAME)
def test_experiment_runs_on_a_tiny_size(module, tmp_path):
    settings = TINY[module]
    progress = []
    result = module.run(settings, [0], adamkit.reproduce.common.Bar(progress.append))
    assert result.name == module.NAME and result.claims and result.figures
    assert 0 < sum(progress) <= module.total_work(settings, 1)
    for claim in result.claims:
        assert claim.verdict in VERDICTS
        if claim.key in TINY_EXPECTED:
            assert claim.verdict == TINY_EXPECTED[claim.key], claim.measured_text()
    meta = {"adamkit_version": "test", "torch_version": torch.__version__, "command": "test", "quick": True,
            "seeds": [0], "wall_seconds": 0.0}
    document = report.write_report(tmp_path, [result], meta)
    report.validate(document)
    assert (tmp_path / "index.html").exists()


# -- the verdict helper and the measures ------------------------------------------------


def test_verdict_helper():
    assert verdict(True) == REPRODUCED
    assert verdict(True, defect=True) == DEFECT_REPRODUCED
    assert verdict(False) == verdict(False, defect=True) == NOT_REPRODUCED


def test_measure_spread_and_json():
    m = Measure([1.0, 2.0, 3.0], "nats")
    assert m.mean == 2.0 and m.std == pytest.approx(1.0)
    assert m.to_json()["values"] == [1.0, 2.0, 3.0]
    assert Measure([math.inf]).to_json()["mean"] is None  # JSON has no infinity


# -- experiment 5 ------------------------------------------------------------------------


def test_online_problem_first_step_and_regret():
    sim = amsgrad_online.simulate(300, seeds=[1])
    # step 1: gradient 1010, bias-corrected m̂/√v̂ = 1, so x moves by α_1 = 0.5 (up to ε).
    assert sim["adam"][1, 0] == pytest.approx(-0.5, abs=1e-9)
    assert sim["amsgrad"][1, 0] == pytest.approx(-0.5, abs=1e-9)
    # average regret against a brute-force minimum over a grid of fixed points
    x, g = sim["adam"][:, 0], sim["grads"][:, 0]
    grid = np.linspace(-1, 1, 201)
    t = 250
    brute = (np.sum(g[:t] * x[:t]) - min(np.sum(g[:t] * z) for z in grid)) / t
    assert amsgrad_online.average_regret(x, g)[t - 1] == pytest.approx(brute, rel=1e-9)


def test_online_rules():
    assert amsgrad_online.rule_adam_wrong_end(0.95, 0.3, 0.1)
    assert not amsgrad_online.rule_adam_wrong_end(0.95, 0.1, 0.3)
    assert amsgrad_online.rule_amsgrad_converges(-0.95) and not amsgrad_online.rule_amsgrad_converges(-0.5)


# -- experiment 6 ------------------------------------------------------------------------


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


# -- experiment 7 ------------------------------------------------------------------------


def test_best_decay_spread():
    lrs, decays = [1e-3, 1e-2, 1e-1], [1e-4, 1e-3, 1e-2]
    diagonal = np.array([[0.3, 0.2, 0.1], [0.2, 0.1, 0.2], [0.1, 0.2, 0.3]])
    column = np.array([[0.2, 0.1, 0.3], [0.2, 0.1, 0.3], [0.9, 0.8, 0.9]])
    assert weight_decay.best_decay_spread(diagonal, lrs, decays) == pytest.approx(2.0)
    assert weight_decay.best_decay_spread(column, lrs, decays) == 0.0


# -- experiment 8 ------------------------------------------------------------------------


def test_good_width():
    assert tuning.good_width([1e-4, 1e-3, 1e-2, 1e-1], [1.0, 0.5, 0.6, 2.0]) == pytest.approx(2.0)
    assert tuning.good_width([1e-4, 1e-3, 1e-2, 1e-1], [1.0, 0.5, math.inf, 2.0]) == pytest.approx(1.0)


def test_deviation_is_relative_to_distance_travelled():
    reference = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    run = reference + np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.4]])
    np.testing.assert_allclose(invariance.deviation(run, reference), [0.0, 0.05, 0.1])


def test_bias_correction_rule():
    lrs = [1e-3, 1e-2]
    good = {(b1, lr, c): (100.0 if c else 500.0) for b1 in bias_correction.BETA1S for lr in lrs for c in (True, False)}
    assert bias_correction.rule_bias_correction(good, 550.0, lrs)
    bad = dict(good)
    bad[(0.9, 1e-3, False)] = 95.0  # one cell trains fine without correction
    assert not bias_correction.rule_bias_correction(bad, 550.0, lrs)
    assert bias_correction.rule_bias_correction({**good, (0.0, 1e-2, False): math.inf}, 550.0, lrs)
