"""Experiment 8d: automatic annealing (Kingma & Ba, Sec. 2.1).

The effective step α·m̂/√v̂ shrinks near an optimum: there the gradient is mostly
noise, |E[g]|/√E[g²] (the signal-to-noise ratio) is small, and so is m̂/√v̂, even at
a constant α. A noisy linear regression trained with minibatches at a constant α
records |Δθ|/α per step. The windows are defined by state, not by fractions of the
run: "far" = steps after 1/(1 − β2) (v̂ has forgotten the start) while |θ − θ*|² is
still above ``FAR`` × its initial value; "near" = steps where |θ − θ*|² has stayed
below ``NEAR`` × its initial value for the previous 2/(1 − β2) steps (v̂ has
forgotten the approach). Verdicts at two budgets. In pure noise m̂/√v̂ does not go
to zero: per coordinate its mean magnitude settles near √(2/π)·√((1 − β1)/(1 + β1)) ≈ 0.18
for β1 = 0.9, which the report compares with the near window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import stats
from .common import Claim, ExperimentResult, Figure, Measure, band, make_optimizer, new_figure
from .runner import Runner

NAME = "annealing"
TITLE = "Automatic annealing of the effective step"
LR = 3e-3
BETA2 = 0.999
DIM, NOISE, BATCH = 20, 1.0, 16
FAR = 0.1  # far: excess ≥ 10 % of the initial excess
NEAR = 1e-3  # near: excess ≤ 0.1 % of the initial excess
PAPER_REF = "Kingma & Ba (2015), Sec. 2.1"
# E|m̂|/√v̂ per coordinate once the gradient is pure zero-mean Gaussian noise (β1 = 0.9, late t):
# m̂ ~ N(0, σ²(1 − β1)/(1 + β1)), √v̂ → σ.
NOISE_FLOOR = float(np.sqrt(2 / np.pi) * np.sqrt((1 - 0.9) / (1 + 0.9)))


@dataclass
class Settings:
    budgets: tuple[int, int]

    @classmethod
    def quick(cls) -> "Settings":
        return cls(budgets=(5000, 7000))

    @classmethod
    def full(cls) -> "Settings":
        return cls(budgets=(12000, 20000))


def estimated_runs(settings: Settings, n_seeds: int) -> int:
    return n_seeds


def trial(steps: int, seed: int) -> dict:
    """Per step: mean over coordinates of |Δθ|/α, and the excess |θ − θ*|²."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(DIM, generator=generator) * 3.0
    theta = nn.Parameter(torch.zeros(DIM))
    optimizer = make_optimizer("Adam", [theta], LR, betas=(0.9, BETA2))
    effective, excess = np.zeros(steps), np.zeros(steps)
    initial = float((target**2).sum())
    for t in range(steps):
        x = torch.randn(BATCH, DIM, generator=generator)
        y = x @ target + NOISE * torch.randn(BATCH, generator=generator)
        before = theta.detach().clone()
        optimizer.zero_grad()
        (0.5 * ((x @ theta - y) ** 2).mean()).backward()
        optimizer.step()
        effective[t] = float(((theta.detach() - before).abs() / LR).mean())
        excess[t] = float(((theta.detach() - target) ** 2).sum())
    return {"effective": effective.tolist(), "excess": excess.tolist(), "initial": initial}


def windows(result: dict, budget: int) -> tuple[float, float]:
    """Mean effective step in the far and near windows within the first ``budget`` steps (nan if a window is empty)."""
    effective = np.asarray(result["effective"][:budget])
    excess = np.asarray(result["excess"][:budget])
    t = np.arange(1, budget + 1)
    far = (t >= 1 / (1 - BETA2)) & (excess >= FAR * result["initial"])
    inside = excess <= NEAR * result["initial"]
    settle = int(2 / (1 - BETA2))
    # near: inside for the previous `settle` steps (a running count of consecutive steps inside)
    run_length = np.zeros(budget, dtype=int)
    count = 0
    for i, flag in enumerate(inside):
        count = count + 1 if flag else 0
        run_length[i] = count
    near = run_length > settle
    return (float(effective[far].mean()) if far.any() else float("nan"),
            float(effective[near].mean()) if near.any() else float("nan"))


def run(settings: Settings, seeds: list[int], runner: Runner) -> ExperimentResult:
    runs = runner.map(trial, [{"steps": max(settings.budgets), "seed": seed} for seed in seeds])
    claims = []
    for budget in settings.budgets:
        pairs = [windows(r, budget) for r in runs]
        complete = [(f, n) for f, n in pairs if np.isfinite(f) and np.isfinite(n)]
        ratios = [np.log(n / f) for f, n in complete]
        interval = stats.bootstrap_interval(ratios or [float("nan")], "log(effective step near / far)")
        holds = stats.below(interval, 0.0) if len(complete) == len(pairs) else None
        claims.append(Claim(
            key="annealing" if budget == max(settings.budgets) else "annealing-short",
            statement=f"Adam's effective step shrinks near the optimum at constant α (automatic annealing), within {budget:,} steps",
            paper_ref=PAPER_REF,
            paper_statement="\"With a smaller SNR the effective stepsize Δt will be closer to zero ... the SNR value typically becomes "
                            "closer to 0 towards an optimum, leading to smaller effective steps in parameter space: a form of automatic "
                            "annealing\"",
            steps=budget,
            measured={"mean |Δθ|/α, far window": Measure([f for f, _ in pairs], "× α"),
                      "mean |Δθ|/α, near window": Measure([n for _, n in pairs], "× α"),
                      "seeds whose run reached the near window": Measure([float(len(complete))])},
            rule=f"95 % bootstrap interval of the per-seed log(near / far) below 0 (the step is smaller near the optimum); far = steps ≥ 1/(1 − β2) "
                 f"with |θ − θ*|² ≥ {FAR:g} × initial, near = |θ − θ*|² ≤ {NEAR:g} × initial for the previous 2/(1 − β2) steps; no verdict unless every seed reaches both windows",
            intervals=[interval],
            holds=holds,
            budget=f"{budget:,} steps",
            note=(f"no verdict: {len(pairs) - len(complete)} seed(s) did not reach both windows within the budget" if len(complete) < len(pairs)
                  else f"the step shrinks to {np.exp(np.mean(ratios)):.0%} of its far value (geometric mean over seeds), to "
                       f"{np.mean([n for _, n in complete]):.3f} α near the optimum, close to the pure-noise value E|m̂|/√v̂ = "
                       f"√(2/π)·√((1 − β1)/(1 + β1)) = {NOISE_FLOOR:.3f} for Gaussian gradients: at constant α the step settles at the "
                       "noise level instead of annealing to zero"),
        ))
    fig, (ax1, ax2) = new_figure(ncols=2)
    steps = np.arange(1, max(settings.budgets) + 1)
    band(ax1, steps, [r["effective"] for r in runs], "mean over coordinates of |Δθ|/α")
    ax1.set(xscale="log", yscale="log", xlabel="step (log scale)", ylabel="effective step |Δθ|/α (log scale)", title=f"Effective step at constant α = {LR:g}")
    ax1.legend()
    band(ax2, steps, [np.asarray(r["excess"]) / r["initial"] for r in runs], "|θ − θ*|² / initial", color="C1")
    ax2.axhline(FAR, color="grey", linestyle="--", label="far window: above")
    ax2.axhline(NEAR, color="grey", linestyle=":", label="near window: below")
    ax2.set(xscale="log", yscale="log", xlabel="step (log scale)", ylabel="relative excess loss (log)", title="Distance to the optimum and the windows")
    ax2.legend()
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source=PAPER_REF,
        setup={
            "problem": f"linear regression, d = {DIM}, x ~ N(0, I), y = x·θ* + N(0, {NOISE}²), θ* ~ N(0, 9 I), minibatch {BATCH}, fresh samples every step",
            "optimizer": f"adamkit.Adam, constant lr {LR}, betas (0.9, {BETA2})",
            "budgets (steps)": list(settings.budgets),
            "seeds": seeds,
        },
        deviations=["the paper argues the property (Sec. 2.1) without an experiment: the design is ours"],
        claims=claims,
        figures=[Figure("annealing", fig, "Effective step and relative distance to the optimum with the two windows (band: min-max over seeds).")],
        seeds=seeds,
    )
