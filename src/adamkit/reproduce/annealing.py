"""Experiment 8d: automatic annealing (Kingma & Ba, Sec. 2.1).

The effective step α·m̂/√v̂ shrinks near an optimum: there the gradient is mostly
noise, |E[g]|/√E[g²] (the signal-to-noise ratio) is small, and so is m̂/√v̂,
even at a constant α. A noisy linear regression trained with minibatches records
|Δθ|/α per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .common import Bar, Claim, ExperimentResult, Figure, Measure, band, make_optimizer, new_figure, verdict

NAME = "annealing"
TITLE = "Automatic annealing of the effective step"
LR = 1e-2
DIM, NOISE, BATCH = 20, 1.0, 16


@dataclass
class Settings:
    steps: int

    @classmethod
    def quick(cls) -> "Settings":
        return cls(steps=2000)

    @classmethod
    def full(cls) -> "Settings":
        return cls(steps=10000)


def total_work(settings: Settings, n_seeds: int) -> int:
    return settings.steps * n_seeds


def measure(steps: int, seed: int, bar: Bar | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per step: mean over coordinates of |Δθ|/α, and the excess loss |θ − θ*|²."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(DIM, generator=generator) * 3.0
    theta = nn.Parameter(torch.zeros(DIM))
    optimizer = make_optimizer("Adam", [theta], LR)
    effective, excess = np.zeros(steps), np.zeros(steps)
    for t in range(steps):
        x = torch.randn(BATCH, DIM, generator=generator)
        y = x @ target + NOISE * torch.randn(BATCH, generator=generator)
        before = theta.detach().clone()
        optimizer.zero_grad()
        (0.5 * ((x @ theta - y) ** 2).mean()).backward()
        optimizer.step()
        effective[t] = float(((theta.detach() - before).abs() / LR).mean())
        excess[t] = float(((theta.detach() - target) ** 2).sum())
        if bar is not None and (t + 1) % 100 == 0:
            bar.update(100)
    return effective, excess


def rule_annealing(first: float, last: float) -> bool:
    """The mean effective step over the last 10 % of steps is at most half that over the first 10 %."""
    return last <= 0.5 * first


def run(settings: Settings, seeds: list[int], bar: Bar | None = None) -> ExperimentResult:
    runs = [measure(settings.steps, seed, bar) for seed in seeds]
    tenth = settings.steps // 10
    first = Measure([float(e[:tenth].mean()) for e, _ in runs], "× α")
    last = Measure([float(e[-tenth:].mean()) for e, _ in runs], "× α")
    claims = [
        Claim(
            key="annealing",
            statement="Adam's effective step shrinks near the optimum as the gradient's signal-to-noise ratio falls (automatic annealing)",
            measured={"mean |Δθ|/α, first 10 % of steps": first, "mean |Δθ|/α, last 10 % of steps": last},
            paper="a smaller SNR makes the effective step closer to zero near an optimum: a form of automatic annealing (Kingma & Ba, Sec. 2.1)",
            rule="mean |Δθ|/α over the last 10 % of steps ≤ 0.5 × over the first 10 %, constant α",
            verdict=verdict(rule_annealing(first.mean, last.mean)),
        )
    ]
    fig, (ax1, ax2) = new_figure(ncols=2)
    steps = np.arange(1, settings.steps + 1)
    band(ax1, steps, [e for e, _ in runs], "mean over coordinates of |Δθ|/α")
    ax1.set(xscale="log", yscale="log", xlabel="step (log scale)", ylabel="effective step |Δθ|/α (log scale)",
            title=f"Effective step at constant α = {LR:g}")
    ax1.legend()
    band(ax2, steps, [x for _, x in runs], "excess loss |θ − θ*|²", color="C1")
    ax2.set(xscale="log", yscale="log", xlabel="step (log scale)", ylabel="|θ − θ*|² (squared units of θ, log scale)",
            title="Distance to the optimum")
    ax2.legend()
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source="Kingma & Ba (2015), Sec. 2.1",
        setup={
            "problem": f"linear regression, d = {DIM}, x ~ N(0, I), y = x·θ* + N(0, {NOISE}²), θ* ~ N(0, 9 I), minibatch {BATCH}, fresh samples every step",
            "optimizer": f"adamkit.Adam, constant lr {LR}, defaults otherwise",
            "steps": settings.steps,
            "seeds": seeds,
        },
        claims=claims,
        figures=[Figure("annealing", fig, "Effective step and distance to the optimum (band: min-max over seeds).")],
        seeds=seeds,
    )
