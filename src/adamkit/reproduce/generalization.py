"""Experiment 6: do adaptive methods generalize worse? (Wilson et al., 2017)

Part 1 is Wilson et al.'s least-squares construction (Sec. 3.3): labels y_i = +1
with probability p; features x_i1 = y_i, x_i2 = x_i3 = 1 and a block of features
unique to example i, one long if y_i = +1 and five long if y_i = -1 (d = 3 + 5n).
X sign(X^T y) = 4y, so adaptive methods started at 0 move along sign(X^T y) and
predict +1 for every new example (test error 1 - p); gradient descent stays in
the row space of X, reaches the minimum-norm solution and classifies new
examples by their first feature (test error 0).

Part 2 is a real task (MNIST, a one-hidden-layer network): SGD with momentum
against Adam and AdamW, each given the same learning-rate grid, the best rate
chosen on a validation split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import data
from .common import (
    Bar, Claim, ExperimentResult, Figure, Measure, accuracy, make_optimizer, mlp, new_figure,
    seed_everything, train_classifier, verdict,
)

NAME = "generalization"
TITLE = "Generalization: adaptive methods vs gradient descent (Wilson et al.)"

CONSTRUCTION_OPTIMIZERS = {  # name -> learning rate (full-batch, float64)
    "GD": 0.2,
    "Adam": 0.01,
    "Adagrad": 0.05,
    "RMSprop": 0.001,
}


@dataclass
class Settings:
    n_train: int  # construction: training examples
    n_test: int
    steps: int  # construction: full-batch steps
    p: float
    mnist_train: int
    mnist_val: int
    mnist_test: int
    hidden: int
    epochs: int
    lr_grid: dict[str, list[float]]

    @classmethod
    def quick(cls) -> "Settings":
        return cls(n_train=40, n_test=1000, steps=400, p=0.7, mnist_train=2000, mnist_val=1000, mnist_test=1000,
                   hidden=128, epochs=4,
                   lr_grid={"SGD-momentum": [0.1, 0.03], "Adam": [3e-3, 1e-3], "AdamW": [3e-3, 1e-3]})

    @classmethod
    def full(cls) -> "Settings":
        return cls(n_train=100, n_test=2000, steps=3000, p=0.7, mnist_train=3000, mnist_val=1000, mnist_test=1000,
                   hidden=256, epochs=25,
                   lr_grid={"SGD-momentum": [0.3, 0.1, 0.03, 0.01], "Adam": [3e-3, 1e-3, 3e-4, 1e-4],
                            "AdamW": [3e-3, 1e-3, 3e-4, 1e-4]})


def total_work(settings: Settings, n_seeds: int) -> int:
    runs = sum(len(v) for v in settings.lr_grid.values()) * n_seeds
    return len(CONSTRUCTION_OPTIMIZERS) * settings.steps // 100 + runs * settings.epochs


# -- part 1: the construction ----------------------------------------------------------


def wilson_data(n: int, p: float, generator: np.random.Generator, n_positive: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 3 + 5n) and labels of Wilson et al.'s construction.

    ``n_positive`` fixes the number of positive labels (training set: it must be a
    majority so that sign(sum y) = +1); otherwise labels are drawn with P(+1) = p.
    """
    if n_positive is None:
        y = np.where(generator.random(n) < p, 1.0, -1.0)
    else:
        y = np.array([1.0] * n_positive + [-1.0] * (n - n_positive))
        generator.shuffle(y)
    x = np.zeros((n, 3 + 5 * n))
    x[:, 0] = y
    x[:, 1:3] = 1.0
    for i in range(n):
        width = 1 if y[i] > 0 else 5
        x[i, 3 + 5 * i : 3 + 5 * i + width] = 1.0
    return x, y


def test_error(w: np.ndarray, y_test: np.ndarray) -> float:
    """Error on fresh examples: their unique features are unseen (weight 0), so the
    prediction is sign(w1 y + w2 + w3); a zero prediction counts as an error."""
    margin = (w[0] * y_test + w[1] + w[2]) * y_test
    return float(np.mean(margin <= 0))


def train_construction(x: np.ndarray, y: np.ndarray, name: str, lr: float, steps: int, bar: Bar | None = None) -> tuple[np.ndarray, list[float]]:
    """Full-batch least squares, 0.5 * mean (x w - y)^2, from w = 0."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    w = nn.Parameter(torch.zeros(x.shape[1], dtype=torch.float64))
    optimizer = make_optimizer("SGD" if name == "GD" else name, [w], lr)
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = 0.5 * ((xt @ w - yt) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if bar is not None and (step + 1) % 100 == 0:
            bar.update(1)
    return w.detach().numpy(), losses


def rule_construction(errors: dict[str, float], negative_fraction: float) -> bool:
    """GD's test error ≤ 0.01; every adaptive method's within 0.01 of 1 - p (the test set's negative fraction)."""
    adaptive_ok = all(abs(err - negative_fraction) <= 0.01 for name, err in errors.items() if name != "GD")
    return errors["GD"] <= 0.01 and adaptive_ok


# -- part 2: a real task ---------------------------------------------------------------


def rule_real_task(sgd: Measure, adam: Measure, adamw: Measure) -> bool:
    """SGD-momentum's mean test accuracy beats both Adam's and AdamW's by more than the
    largest seed std (at least 0.2 percentage points)."""
    margin = max(sgd.std, adam.std, adamw.std, 0.002)
    return sgd.mean - adam.mean > margin and sgd.mean - adamw.mean > margin


def _real_task_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "SGD-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "AdamW":
        return make_optimizer("AdamW", params, lr, weight_decay=1e-2)
    return make_optimizer(name, params, lr)


def run(settings: Settings, seeds: list[int], bar: Bar | None = None) -> ExperimentResult:
    # Part 1 (deterministic for a given seed: the first seed draws the data)
    rng = np.random.default_rng(seeds[0])
    n_pos = math.ceil(settings.p * settings.n_train)
    x, y = wilson_data(settings.n_train, settings.p, rng, n_positive=n_pos)
    _, y_test = wilson_data(settings.n_test, settings.p, rng)
    negative_fraction = float(np.mean(y_test < 0))
    errors, curves, weights = {}, {}, {}
    for name, lr in CONSTRUCTION_OPTIMIZERS.items():
        w, losses = train_construction(x, y, name, lr, settings.steps, bar)
        errors[name], curves[name], weights[name] = test_error(w, y_test), losses, w
    claims = [
        Claim(
            key="wilson-construction",
            statement="On Wilson et al.'s construction adaptive methods reach test error 1 − p, gradient descent 0",
            measured={f"{name} test error": Measure([err]) for name, err in errors.items()}
            | {"1 − p (test set)": Measure([negative_fraction])},
            paper="GD test error 0; Adagrad, RMSprop, Adam test error 1 − p (Wilson et al. 2017, Sec. 3.3)",
            rule="GD test error ≤ 0.01 and every adaptive method within 0.01 of the test set's fraction of negatives",
            verdict=verdict(rule_construction(errors, negative_fraction), defect=True),
        )
    ]

    # Part 2
    split = data.mnist(settings.mnist_train + settings.mnist_val, settings.mnist_test, seed=seeds[0])
    xtr, ytr = split.x_train[: settings.mnist_train], split.y_train[: settings.mnist_train]
    xva, yva = split.x_train[settings.mnist_train :], split.y_train[settings.mnist_train :]
    val = {name: {lr: [] for lr in grid} for name, grid in settings.lr_grid.items()}
    test = {name: {lr: [] for lr in grid} for name, grid in settings.lr_grid.items()}
    for name, grid in settings.lr_grid.items():
        for lr in grid:
            for seed in seeds:
                generator = seed_everything(seed)
                model = mlp([784, settings.hidden, 10])
                optimizer = _real_task_optimizer(name, model.parameters(), lr)
                train_classifier(model, optimizer, xtr, ytr, epochs=settings.epochs, batch_size=64,
                                 generator=generator, bar=bar)
                val[name][lr].append(accuracy(model, xva, yva))
                test[name][lr].append(accuracy(model, split.x_test, split.y_test))
    best_lr = {name: max(grid, key=lambda lr: np.mean(val[name][lr])) for name, grid in settings.lr_grid.items()}
    chosen = {name: Measure(test[name][best_lr[name]]) for name in settings.lr_grid}
    claims.append(
        Claim(
            key="generalization-real-task",
            statement="With the same tuning budget, SGD with momentum reaches higher test accuracy than Adam and AdamW",
            measured={f"{name} test accuracy (lr {best_lr[name]:g})": chosen[name] for name in settings.lr_grid},
            paper="Adaptive methods generalize worse than SGD with momentum (Wilson et al. 2017, Sec. 4: CIFAR-10, language models)",
            rule="SGD-momentum's mean test accuracy exceeds Adam's and AdamW's by more than max(seed std, 0.002)",
            verdict=verdict(rule_real_task(chosen["SGD-momentum"], chosen["Adam"], chosen["AdamW"]), defect=True),
        )
    )

    fig, (ax1, ax2) = new_figure(ncols=2)
    for name, losses in curves.items():
        ax1.plot(np.arange(1, len(losses) + 1), losses, label=f"{name} (test error {errors[name]:.3f})")
    ax1.set(xscale="log", yscale="log", xlabel="full-batch step (log scale)", ylabel="training loss ½·mean (xw − y)² (log scale)",
            title=f"Wilson construction, n = {settings.n_train}, p = {settings.p}")
    ax1.legend()
    names = list(weights)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        ax2.bar(np.arange(3) + k * width, weights[name][:3], width, label=name)
    ax2.set(xticks=np.arange(3) + 0.4 - width / 2, xticklabels=["w1 (label feature)", "w2 (constant)", "w3 (constant)"],
            ylabel="weight value (dimensionless)", title="Weights on the shared features after training")
    ax2.legend()
    fig2, ax = new_figure()
    for name, grid in settings.lr_grid.items():
        means = [np.mean(test[name][lr]) * 100 for lr in grid]
        lows = [np.min(test[name][lr]) * 100 for lr in grid]
        highs = [np.max(test[name][lr]) * 100 for lr in grid]
        line = ax.plot(grid, means, marker="o", label=f"{name} (chosen lr {best_lr[name]:g})")[0]
        if len(seeds) > 1:
            ax.fill_between(grid, lows, highs, color=line.get_color(), alpha=0.2)
    ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="MNIST test accuracy (%)",
           title="Real task: test accuracy over the shared tuning grid (band: min-max over seeds)")
    ax.legend()
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source="Wilson, Roelofs, Stern, Srebro & Recht (2017), Sec. 3.3 and Sec. 4",
        setup={
            "construction": f"n = {settings.n_train} training examples ({n_pos} positive), d = {3 + 5 * settings.n_train}, "
                            f"{settings.n_test} test examples with P(y = +1) = {settings.p}; full-batch least squares from w = 0, float64, {settings.steps} steps",
            "construction optimizers": {k: f"lr {v}" for k, v in CONSTRUCTION_OPTIMIZERS.items()}
            | {"note": "GD = torch.optim.SGD without momentum; Adam = adamkit.Adam defaults otherwise"},
            "real task data": f"MNIST: {settings.mnist_train} train / {settings.mnist_val} validation / {settings.mnist_test} test of the 5,000 real digits",
            "real task model": f"784-{settings.hidden}-10 ReLU network, batch 64, {settings.epochs} epochs",
            "tuning budget": {k: [f"{v:g}" for v in grid] for k, grid in settings.lr_grid.items()},
            "real task optimizers": "torch.optim.SGD(momentum=0.9); adamkit.Adam; adamkit.AdamW(weight_decay=1e-2); lr chosen by mean validation accuracy",
            "seeds": seeds,
        },
        claims=claims,
        figures=[
            Figure("generalization-construction", fig, "Wilson et al.'s construction: training loss and the learned weights on the shared features."),
            Figure("generalization-mnist", fig2, "MNIST test accuracy for every learning rate of the shared grid."),
        ],
        seeds=seeds,
        extra={"construction_test_error": errors, "best_lr": best_lr},
    )
