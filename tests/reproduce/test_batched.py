"""Batched training (reproduce.batched): R runs trained as one model give each run's sequential curve."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adamkit.reproduce import batched, cnn, logistic, mlp, sparse
from adamkit.reproduce.runner import Runner, batches

RUNS = [(1e-2, 0), (3e-3, 1), (1e-2, 1)]  # two learning rates (two param groups), two seeds, one seed at both rates

SMALL = {
    logistic: {"l2": 1e-3, "epochs": 2, "batch_size": 64, "n_train": 300},
    mlp: {"hidden": 16, "n_train": 300, "epochs": 2, "dropout": 0.5},
    cnn: {"channels": 2, "n_train": 200, "epochs": 1},
    sparse: {"vocabulary": 100, "documents": 300, "tokens": 8, "epochs": 2, "batch_size": 64, "dropout": 0.5},
}
OPTIMIZERS = {
    logistic: logistic.OPTIMIZERS,
    mlp: tuple(mlp.START),
    cnn: tuple(cnn.START),
    sparse: tuple(sparse.START),
}


def assert_same_curves(sequential: list[dict], together: list[dict]) -> None:
    for s, t in zip(sequential, together):
        assert s["ticks"] == t["ticks"]
        np.testing.assert_allclose(t["losses"], s["losses"], rtol=2e-5, atol=0)


@pytest.mark.parametrize("module", list(SMALL), ids=lambda m: m.NAME)
def test_batched_curves_equal_the_sequential_runs(module):
    with torch.random.fork_rng():
        for name in OPTIMIZERS[module]:
            scale = 30.0 if name in ("SGD-Nesterov", "Adadelta") and module is not sparse else 1.0
            runs = [(lr * scale, seed) for lr, seed in RUNS]
            sequential = [module.trial(name, lr, seed, **SMALL[module]) for lr, seed in runs]
            assert_same_curves(sequential, module.trial.batched(name, runs, **SMALL[module]))


def test_a_run_does_not_see_its_neighbours():
    """Changing one run's learning rate, or making it diverge, leaves the other runs' curves alone."""
    kwargs = SMALL[mlp]
    base = mlp.trial.batched("SGD-Nesterov", [(0.05, 0), (0.05, 1)], **kwargs)
    moved = mlp.trial.batched("SGD-Nesterov", [(0.05, 0), (1e4, 1)], **kwargs)
    np.testing.assert_allclose(moved[0]["losses"], base[0]["losses"], rtol=1e-6)
    assert not math.isfinite(moved[1]["losses"][-1])  # the diverged run stops at its first non-finite cost, as a sequential run does
    assert len(moved[1]["losses"]) == len(mlp.trial("SGD-Nesterov", 1e4, 1, **kwargs)["losses"]) < len(base[1]["losses"])


def test_stacked_parameters_keep_each_runs_initialisation():
    stack = batched.Stack(lambda: torch.nn.Linear(4, 3), [(1.0, 5), (2.0, 6), (1.0, 7)])
    assert stack.lrs == [1.0, 2.0] and stack.order == [0, 2, 1]
    weights = stack.params()[0]
    for row, i in enumerate(stack.order):
        torch.manual_seed([5, 6, 7][i])
        torch.testing.assert_close(weights[row], torch.nn.Linear(4, 3).weight.detach())


CALLS: list[list[tuple[float, int]]] = []


def _runs(name: str, runs: list[tuple[float, int]], size: int) -> list[dict]:
    CALLS.append(list(runs))
    return [{"name": name, "lr": lr, "seed": seed, "size": size} for lr, seed in runs]


@batched.batchable(_runs)
def _trial(name: str, lr: float, seed: int, size: int) -> dict:
    return {"name": name, "lr": lr, "seed": seed, "size": size}


def test_runner_groups_runs_that_differ_only_in_lr_and_seed():
    CALLS.clear()
    jobs = [{"name": n, "lr": lr, "seed": s, "size": size} for n in ("A", "B") for size in (1, 2) for lr in (0.1, 0.2, 0.4) for s in range(4)]
    with Runner(jobs=1, batch=5) as runner:
        out = runner.map(_trial, jobs)
        assert runner.runs == len(jobs)
    assert out == jobs  # each result back at its run's place
    assert sorted(len(call) for call in CALLS) == [4] * 12  # four groups of 12 runs, each in three calls of at most 5
    assert all(len({(lr, seed) for lr, seed in call}) == len(call) for call in CALLS)


def test_batches_are_contiguous_bounded_and_feed_every_process():
    same = [{"name": "A", "lr": 0.1 * (i // 2), "seed": i % 2} for i in range(6)]
    assert batches(same, jobs=2, batch=10) == [[0, 1, 2], [3, 4, 5]]  # two processes: two calls, though ten would fit in one
    assert batches(same, jobs=1, batch=4) == [[0, 1, 2], [3, 4, 5]]
    assert batches(same[:1], jobs=2, batch=10) == [[0]]
    mixed = same + [{"name": "B", "lr": 0.1, "seed": 0}]
    assert batches(mixed, jobs=1, batch=10) == [[0, 1, 2, 3, 4, 5], [6]]


@batched.batchable(_runs, when=lambda kwargs: kwargs["size"] > 1)
def _trial_when(name: str, lr: float, seed: int, size: int) -> dict:
    return {"name": name, "lr": lr, "seed": seed, "size": size, "alone": True}


def test_runner_batches_only_where_the_mark_says_it_pays():
    CALLS.clear()
    with Runner(jobs=1) as runner:
        alone = runner.map(_trial_when, [{"name": "A", "lr": 0.1, "seed": s, "size": 1} for s in range(3)])
        together = runner.map(_trial_when, [{"name": "A", "lr": 0.1, "seed": s, "size": 2} for s in range(3)])
    assert all(r["alone"] for r in alone) and not any("alone" in r for r in together)
    assert CALLS == [[(0.1, 0), (0.1, 1), (0.1, 2)]]
    assert not mlp.trial.batch_when({"device": "cpu"}) and mlp.trial.batch_when({"device": "cuda"})


def test_forward_refuses_layers_it_cannot_batch():
    stack = batched.Stack(lambda: torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)), [(1.0, 0), (1.0, 1)])
    with pytest.raises(ValueError, match="BatchNorm1d"):
        batched.forward(stack.template, stack.params(), torch.zeros(5, 4), shared=True, training=True)
