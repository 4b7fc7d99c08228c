"""Experiment 8e: non-stationary objectives (Kingma & Ba, abstract and Sec. 1).

A noisy linear regression whose target θ* jumps to a new random point half-way.
Adam's moment estimates are exponential moving averages, so it forgets the old
gradient scale; Adagrad's accumulated sum of squares only grows, so its steps
after the jump are as small as they had become before it. Each optimizer's
learning rate is chosen from a grid on the first (stationary) half alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .common import Bar, Claim, ExperimentResult, Figure, Measure, band, make_optimizer, new_figure, verdict

NAME = "nonstationary"
TITLE = "Non-stationary objective: a target that moves mid-run"
DIM, NOISE, BATCH = 20, 0.5, 8


@dataclass
class Settings:
    phase_steps: int
    grid: dict[str, list[float]]

    @classmethod
    def quick(cls) -> "Settings":
        return cls(phase_steps=500, grid={"Adam": [1e-2, 3e-2], "Adagrad": [3e-1, 1.0], "RMSprop": [3e-3, 1e-2]})

    @classmethod
    def full(cls) -> "Settings":
        return cls(phase_steps=2500, grid={"Adam": [3e-3, 1e-2, 3e-2], "Adagrad": [1e-1, 3e-1, 1.0], "RMSprop": [1e-3, 3e-3, 1e-2]})


def total_work(settings: Settings, n_seeds: int) -> int:
    return sum(len(g) for g in settings.grid.values()) * n_seeds * 2 * settings.phase_steps


def excess_curve(name: str, lr: float, phase_steps: int, seed: int, bar: Bar | None = None) -> np.ndarray:
    """|θ − θ*_t|² per step; θ*_t jumps to a fresh N(0, 9 I) point at step ``phase_steps``."""
    generator = torch.Generator().manual_seed(seed)
    targets = [torch.randn(DIM, generator=generator) * 3.0 for _ in range(2)]
    theta = nn.Parameter(torch.zeros(DIM))
    optimizer = make_optimizer(name, [theta], lr)
    excess = np.zeros(2 * phase_steps)
    for t in range(2 * phase_steps):
        target = targets[t // phase_steps]
        x = torch.randn(BATCH, DIM, generator=generator)
        y = x @ target + NOISE * torch.randn(BATCH, generator=generator)
        optimizer.zero_grad()
        (0.5 * ((x @ theta - y) ** 2).mean()).backward()
        optimizer.step()
        excess[t] = float(((theta.detach() - target) ** 2).sum())
        if bar is not None and (t + 1) % 100 == 0:
            bar.update(100)
    return excess


def tail_mean(curve: np.ndarray, end: int, width: int) -> float:
    return float(curve[end - width : end].mean())


def rule_recovers(ratio: dict[str, float]) -> bool:
    """Adam ends the second phase within 2× of its first-phase level, and recovers better than Adagrad
    (ratio = excess over the last 10 % of phase 2 / over the last 10 % of phase 1)."""
    return ratio["Adam"] <= 2.0 and ratio["Adam"] < ratio["Adagrad"]


def run(settings: Settings, seeds: list[int], bar: Bar | None = None) -> ExperimentResult:
    n, width = settings.phase_steps, max(1, settings.phase_steps // 10)
    curves = {name: {lr: [excess_curve(name, lr, n, seed, bar) for seed in seeds] for lr in grid} for name, grid in settings.grid.items()}
    best = {name: min(settings.grid[name], key=lambda lr: np.mean([tail_mean(c, n, width) for c in curves[name][lr]])) for name in settings.grid}
    ratios = {name: Measure([tail_mean(c, 2 * n, width) / tail_mean(c, n, width) for c in curves[name][best[name]]]) for name in settings.grid}
    phase2 = {name: Measure([tail_mean(c, 2 * n, width) for c in curves[name][best[name]]]) for name in settings.grid}
    claims = [
        Claim(
            key="nonstationary",
            statement="Adam adapts to a non-stationary objective: after the target moves it returns to its earlier accuracy, Adagrad does not",
            measured={f"{name} (lr {best[name]:g}) phase-2 / phase-1 excess loss": ratios[name] for name in settings.grid}
            | {f"{name} excess loss, end of phase 2": phase2[name] for name in settings.grid},
            paper="Adam is appropriate for non-stationary objectives (Kingma & Ba, abstract); Adagrad's effective step only decreases",
            rule="ratio of excess loss (last 10 % of phase 2 / last 10 % of phase 1): Adam ≤ 2 and Adam < Adagrad",
            verdict=verdict(rule_recovers({name: m.mean for name, m in ratios.items()})),
        )
    ]
    fig, ax = new_figure(width=7.5)
    steps = np.arange(1, 2 * n + 1)
    for name in settings.grid:
        band(ax, steps, curves[name][best[name]], f"{name}, lr {best[name]:g}")
    ax.axvline(n, color="grey", linestyle=":", label="target moves")
    ax.set(yscale="log", xlabel="step", ylabel="excess loss |θ − θ*_t|² (squared units of θ, log scale)",
           title="Linear regression whose target jumps half-way (band: min-max over seeds)")
    ax.legend()
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source="Kingma & Ba (2015), abstract and Sec. 1",
        setup={
            "problem": f"linear regression, d = {DIM}, minibatch {BATCH} of fresh samples, label noise σ = {NOISE}; "
                       f"θ* redrawn from N(0, 9 I) after {n} steps; {2 * n} steps in all",
            "optimizers": "adamkit.Adam; torch.optim.Adagrad; torch.optim.RMSprop",
            "learning-rate grid": settings.grid,
            "selection": "lr with the lowest excess loss over the last 10 % of the first (stationary) phase",
            "seeds": seeds,
        },
        claims=claims,
        figures=[Figure("nonstationary", fig, "Excess loss before and after the target moves.")],
        seeds=seeds,
        extra={"best_lr": best},
    )
