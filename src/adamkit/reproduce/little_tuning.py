"""Experiment 8c: Adam "typically requires little tuning" (Kingma & Ba, abstract).

Training cost of an MLP on MNIST over a √2× grid of learning rates spanning more than
five decades, Adam against SGD with Nesterov momentum. Measured per seed as the width,
in decades, of the learning-rate range around the best whose score is within 1.5× of
that seed's best, its ends interpolated between grid points (log score against log lr),
so that a width is not a count of grid points (a whole grid step of 0.3 decades was the
size of the effect). The claim rests on the paired per-seed difference of widths. A
range that reaches an edge of the grid is truncated, so such a seed gives no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import data, stats
from .common import Claim, ExperimentResult, Figure, Measure, make_optimizer, mlp, new_figure, seed_everything, train_classifier
from .runner import Runner

NAME = "little-tuning"
TITLE = "Little tuning: the width of the good learning-rate range"
OPTIMIZERS = ("Adam", "SGD-Nesterov")
GOOD_RANGE = 1.5
PAPER_REF = "Kingma & Ba (2015), abstract"


@dataclass
class Settings:
    lrs: list[float]
    n_train: int
    hidden: int
    epochs: int

    @classmethod
    def quick(cls) -> "Settings":
        return cls(lrs=[1e-5 * 2.0**k for k in range(19)], n_train=1000, hidden=32, epochs=2)

    @classmethod
    def full(cls) -> "Settings":
        return cls(lrs=[1e-5 * 2.0 ** (k / 2) for k in range(37)], n_train=2000, hidden=128, epochs=3)


def estimated_runs(settings: Settings, n_seeds: int) -> int:
    return len(OPTIMIZERS) * len(settings.lrs) * n_seeds


def trial(name: str, lr: float, seed: int, n_train: int, hidden: int, epochs: int) -> float:
    split = data.mnist(n_train, 0)
    generator = seed_everything(seed)
    model = mlp([784, hidden, hidden, 10])
    optimizer = make_optimizer(name, model.parameters(), lr)
    _, losses = train_classifier(model, optimizer, split.x_train, split.y_train, epochs=epochs, batch_size=64,
                                 generator=generator, evals_per_epoch=2)
    return stats.tail_mean(losses)


def good_width(lrs: list[float], losses: list[float], tolerance: float = GOOD_RANGE) -> tuple[float, bool]:
    """(Decades of learning rate around the best whose loss is within ``tolerance``× the best, whether
    that range stays clear of both grid edges).

    The range is the run of grid points next to the best that are within tolerance; each end is
    placed where the straight line between the last good point and the first bad one, in
    (log10 lr, log loss), crosses log(tolerance × best). A diverged (non-finite) neighbour puts the
    end at the last good point.
    """
    x = np.log10(np.asarray(lrs, dtype=float))
    y = np.log(np.asarray(losses, dtype=float))
    i = int(np.argmin(np.where(np.isfinite(y), y, np.inf)))
    level = y[i] + np.log(tolerance)
    good = np.isfinite(y) & (y <= level)
    low, high = i, i
    while low > 0 and good[low - 1]:
        low -= 1
    while high < len(x) - 1 and good[high + 1]:
        high += 1

    def crossing(inside: int, outside: int) -> float:
        if not np.isfinite(y[outside]):
            return float(x[inside])
        share = (level - y[inside]) / (y[outside] - y[inside])
        return float(x[inside] + share * (x[outside] - x[inside]))

    inside_grid = low > 0 and high < len(x) - 1
    left = crossing(low, low - 1) if low > 0 else float(x[0])
    right = crossing(high, high + 1) if high < len(x) - 1 else float(x[-1])
    return right - left, inside_grid


def run(settings: Settings, seeds: list[int], runner: Runner) -> ExperimentResult:
    jobs = [(n, lr, s) for n in OPTIMIZERS for lr in settings.lrs for s in seeds]
    outputs = runner.map(trial, [{"name": n, "lr": lr, "seed": s, "n_train": settings.n_train, "hidden": settings.hidden,
                                  "epochs": settings.epochs} for n, lr, s in jobs])
    final = {n: np.zeros((len(seeds), len(settings.lrs))) for n in OPTIMIZERS}
    for (n, lr, s), value in zip(jobs, outputs):
        final[n][seeds.index(s), settings.lrs.index(lr)] = value
    widths = {n: [good_width(settings.lrs, list(final[n][k])) for k in range(len(seeds))] for n in OPTIMIZERS}
    inside = all(ok for n in OPTIMIZERS for _, ok in widths[n])
    difference = stats.bootstrap_interval([a - b for (a, _), (b, _) in zip(widths["Adam"], widths["SGD-Nesterov"])],
                                          "width Adam − width SGD-Nesterov (decades, paired per seed)")
    claims = [
        Claim(
            key="little-tuning",
            statement="Adam needs little tuning: its good learning-rate range is wider than SGD-Nesterov's",
            paper_ref=PAPER_REF,
            paper_statement="Adam's hyper-parameters have intuitive interpretations and typically require little tuning (no experiment measures it)",
            measured={f"{n} width within {GOOD_RANGE}× of best": Measure([w for w, _ in widths[n]], "decades") for n in OPTIMIZERS}
            | {f"{n} best score": Measure(list(final[n].min(axis=1)), "nats") for n in OPTIMIZERS},
            rule=f"95 % bootstrap interval of the paired per-seed difference of widths (decades of lr around the best with score ≤ {GOOD_RANGE}× "
                 "that seed's best, ends interpolated between grid points) "
                 "above 0; no verdict if a good range touches a grid edge",
            intervals=[difference],
            holds=stats.above(difference, 0.0) if inside else None,
            note="" if inside else "a good range reaches an edge of the grid in some seed: the widths are truncated",
        )
    ]
    fig, ax = new_figure()
    for n in OPTIMIZERS:
        values = np.where(np.isfinite(final[n]), final[n], np.nan)
        line = ax.plot(settings.lrs, np.nanmean(values, axis=0), marker="o", label=n)[0]
        if len(seeds) > 1:
            ax.fill_between(settings.lrs, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=line.get_color(), alpha=0.2)
    ax.set(xscale="log", yscale="log", xlabel="learning rate (log scale)", ylabel="training cost, last 10 % of evaluations (nats, log)",
           title=f"Score after {settings.epochs} epochs over the learning-rate grid (band: min-max over seeds)")
    ax.legend()
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source=PAPER_REF,
        setup={
            "data": f"MNIST, {settings.n_train} of the real digits",
            "model": f"784-{settings.hidden}-{settings.hidden}-10 ReLU MLP, minibatch 64, {settings.epochs} epochs, constant lr",
            "optimizers": "adamkit.Adam (defaults otherwise); torch.optim.SGD(momentum=0.9, nesterov=True)",
            "learning rates": f"{len(settings.lrs)} points from {settings.lrs[0]:g} to {settings.lrs[-1]:.3g}, ×{settings.lrs[1] / settings.lrs[0]:.3g} apart",
            "seeds": seeds,
        },
        deviations=["the abstract's statement has no experiment in the paper; the design (a width of the good lr range) is ours"],
        claims=claims,
        figures=[Figure("little-tuning", fig, "Score against learning rate (band: min-max over seeds; diverged runs left out).")],
        seeds=seeds,
    )
