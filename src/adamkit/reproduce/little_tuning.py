"""Experiment 8c: Adam "typically requires little tuning" (Kingma & Ba, abstract).

Final training loss of an MLP on MNIST over learning rates spanning 4 decades,
Adam against SGD with Nesterov momentum. Measured as the width, in decades, of
the learning rates whose final loss is within 1.5× of that optimizer's best.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import data
from .common import (
    Bar, Claim, ExperimentResult, Figure, Measure, finite_or_inf, make_optimizer, mlp, new_figure, seed_everything,
    train_classifier, verdict,
)

NAME = "little-tuning"
TITLE = "Little tuning: final loss over four decades of learning rate"
OPTIMIZERS = ("Adam", "SGD-Nesterov")
TOLERANCE = 1.5


@dataclass
class Settings:
    lrs: list[float]
    n_train: int
    hidden: int
    epochs: int

    @classmethod
    def quick(cls) -> "Settings":
        return cls(lrs=[1e-4, 1e-3, 1e-2, 1e-1, 1.0], n_train=1500, hidden=64, epochs=2)

    @classmethod
    def full(cls) -> "Settings":
        return cls(lrs=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0], n_train=4000, hidden=256, epochs=3)


def total_work(settings: Settings, n_seeds: int) -> int:
    return len(OPTIMIZERS) * len(settings.lrs) * n_seeds * settings.epochs


def good_width(lrs: list[float], losses: list[float], tolerance: float = TOLERANCE) -> float:
    """Decades covered by the grid points whose loss is within ``tolerance``× the best
    (each point of a log-spaced grid counts for one grid spacing)."""
    spacing = float(np.log10(lrs[1] / lrs[0]))
    best = min(losses)
    return spacing * sum(1 for loss in losses if loss <= tolerance * best)


def rule_little_tuning(width_adam: float, width_sgd: float) -> bool:
    """Adam's good learning-rate range is wider than SGD-Nesterov's."""
    return width_adam > width_sgd


def run(settings: Settings, seeds: list[int], bar: Bar | None = None) -> ExperimentResult:
    split = data.mnist(settings.n_train, 0)
    final = {name: np.zeros((len(seeds), len(settings.lrs))) for name in OPTIMIZERS}
    for name in OPTIMIZERS:
        for i, lr in enumerate(settings.lrs):
            for k, seed in enumerate(seeds):
                generator = seed_everything(seed)
                model = mlp([784, settings.hidden, settings.hidden, 10])
                optimizer = make_optimizer(name, model.parameters(), lr)
                _, losses = train_classifier(model, optimizer, split.x_train, split.y_train, epochs=settings.epochs,
                                             batch_size=64, generator=generator, bar=bar, evals_per_epoch=0)
                final[name][k, i] = finite_or_inf(losses[-1])
    widths = {name: Measure([good_width(settings.lrs, list(final[name][k])) for k in range(len(seeds))], "decades") for name in OPTIMIZERS}
    claims = [
        Claim(
            key="little-tuning",
            statement="Adam needs little tuning: its good learning-rate range is wider than SGD-Nesterov's",
            measured={f"{name} width within {TOLERANCE}× of best": widths[name] for name in OPTIMIZERS}
            | {f"{name} best final loss": Measure(list(final[name].min(axis=1))) for name in OPTIMIZERS},
            paper="hyper-parameters have intuitive interpretations and typically require little tuning (Kingma & Ba, abstract)",
            rule=f"mean width (decades of lr with final loss ≤ {TOLERANCE}× the optimizer's best): Adam > SGD-Nesterov",
            verdict=verdict(rule_little_tuning(widths["Adam"].mean, widths["SGD-Nesterov"].mean)),
        )
    ]
    fig, ax = new_figure()
    for name in OPTIMIZERS:
        values = np.where(np.isfinite(final[name]), final[name], np.nan)
        line = ax.plot(settings.lrs, np.nanmean(values, axis=0), marker="o", label=name)[0]
        if len(seeds) > 1:
            ax.fill_between(settings.lrs, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=line.get_color(), alpha=0.2)
    ax.set(xscale="log", yscale="log", xlabel="learning rate (log scale)", ylabel="final training loss, cross-entropy (nats, log scale)",
           title=f"Final loss after {settings.epochs} epochs over 4 decades of learning rate")
    ax.legend()
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source="Kingma & Ba (2015), abstract and Sec. 1",
        setup={
            "data": f"MNIST, {settings.n_train} of the real digits",
            "model": f"784-{settings.hidden}-{settings.hidden}-10 ReLU MLP, minibatch 64, {settings.epochs} epochs, constant lr",
            "optimizers": "adamkit.Adam (defaults otherwise); torch.optim.SGD(momentum=0.9, nesterov=True)",
            "learning rates": settings.lrs,
            "seeds": seeds,
        },
        claims=claims,
        figures=[Figure("little-tuning", fig, "Final training loss against learning rate (band: min-max over seeds; diverged runs are left out).")],
        seeds=seeds,
    )
