"""Experiment 5: Reddi et al.'s online problem where Adam converges to the worst point.

f_t(x) = 1010 x if t mod 101 = 1 else -10 x on x in [-1, 1] (Reddi, Kale & Kumar,
2018, Sec. 3). The sum over a period is 10 x, so the best fixed point is x = -1;
Adam's rare large gradient is forgotten by v_t within a period and the many small
ones push x to +1. AMSGrad's running max keeps the large gradient in the
denominator. The stochastic variant draws the large gradient with probability
1/101 at each step.

Both optimizers live in one adamkit.Adam with two parameter groups (amsgrad off
and on). Each parameter is a vector: element 0 is the deterministic problem,
element j >= 1 the stochastic problem under seed j; the update is elementwise,
so the elements are independent runs that share the per-step overhead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import adamkit

from .common import Bar, Claim, ExperimentResult, Figure, Measure, new_figure, verdict

NAME = "amsgrad"
TITLE = "AMSGrad: Reddi et al.'s online problem"

PERIOD = 101
BIG, SMALL = 1010.0, -10.0
BETAS = (0.9, 0.99)
ALPHA = 0.5


@dataclass
class Settings:
    steps: int
    chunk: int = 10_000

    @classmethod
    def quick(cls) -> "Settings":
        return cls(steps=15_000)

    @classmethod
    def full(cls) -> "Settings":
        return cls(steps=1_000_000)


def total_work(settings: Settings, n_seeds: int) -> int:
    """Progress units (steps) that :func:`run` reports."""
    return settings.steps


def _gradients(start: int, length: int, generators: list[torch.Generator]) -> torch.Tensor:
    """Gradients for steps start+1 .. start+length: column 0 deterministic, then one per seed."""
    t = torch.arange(start + 1, start + length + 1)
    grads = torch.empty(length, 1 + len(generators), dtype=torch.float64)
    grads[:, 0] = torch.where(t % PERIOD == 1, BIG, SMALL)
    for j, generator in enumerate(generators, start=1):
        big = torch.rand(length, generator=generator, dtype=torch.float64) < 1.0 / PERIOD
        grads[:, j] = torch.where(big, BIG, SMALL)
    return grads


def simulate(steps: int, seeds: list[int], bar: Bar | None = None, chunk: int = 10_000) -> dict[str, np.ndarray]:
    """Run Adam and AMSGrad (torch convention, eps=1e-8, float64) for ``steps`` steps.

    Returns x_t before each step for both (arrays of shape (steps, 1 + len(seeds)))
    and the gradients seen.
    """
    width = 1 + len(seeds)
    x_adam = torch.nn.Parameter(torch.zeros(width, dtype=torch.float64))
    x_ams = torch.nn.Parameter(torch.zeros(width, dtype=torch.float64))
    optimizer = adamkit.Adam(
        [{"params": [x_adam], "amsgrad": False}, {"params": [x_ams], "amsgrad": True}],
        lr=ALPHA,
        betas=BETAS,
    )
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    history = {"adam": torch.empty(steps, width, dtype=torch.float64), "amsgrad": torch.empty(steps, width, dtype=torch.float64)}
    grads_seen = torch.empty(steps, width, dtype=torch.float64)
    for start in range(0, steps, chunk):
        length = min(chunk, steps - start)
        grads = _gradients(start, length, generators)
        grads_seen[start : start + length] = grads
        for i in range(length):
            t = start + i + 1
            history["adam"][t - 1] = x_adam.detach()
            history["amsgrad"][t - 1] = x_ams.detach()
            x_adam.grad = grads[i]
            x_ams.grad = grads[i]
            lr = ALPHA / t**0.5  # alpha_t = alpha / sqrt(t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            with torch.no_grad():  # projection onto the feasible set [-1, 1]
                x_adam.clamp_(-1.0, 1.0)
                x_ams.clamp_(-1.0, 1.0)
        if bar is not None:
            bar.update(length)
    return {
        "adam": history["adam"].numpy(),
        "amsgrad": history["amsgrad"].numpy(),
        "grads": grads_seen.numpy(),
    }


def average_regret(x: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """R_t / t for the linear losses f_t(x) = g_t x against the best fixed x in [-1, 1]."""
    cumulative = np.cumsum(grads * x)
    best = -np.abs(np.cumsum(grads))  # min over x in [-1, 1] of x * sum(g)
    t = np.arange(1, len(x) + 1)
    return (cumulative - best) / t


def rule_adam_wrong_end(adam_final_x: float, adam_regret: float, amsgrad_regret: float) -> bool:
    """Adam ends within 0.1 of the worst point x = +1 and has the larger average regret."""
    return adam_final_x >= 0.9 and adam_regret > amsgrad_regret


def rule_amsgrad_converges(amsgrad_final_x: float) -> bool:
    """AMSGrad ends within 0.1 of the optimum x = -1."""
    return amsgrad_final_x <= -0.9


def rule_stochastic(adam_tail_mean: float, amsgrad_tail_mean: float) -> bool:
    """Over the last 10 % of steps Adam sits in the wrong half (mean x > 0.5), AMSGrad near -1 (< -0.5)."""
    return adam_tail_mean > 0.5 and amsgrad_tail_mean < -0.5


def run(settings: Settings, seeds: list[int], bar: Bar | None = None) -> ExperimentResult:
    sim = simulate(settings.steps, seeds, bar, settings.chunk)
    steps = settings.steps
    final_adam = float(sim["adam"][-1, 0])  # x_T, the last iterate the regret counts
    regret_adam = average_regret(sim["adam"][:, 0], sim["grads"][:, 0])
    regret_ams = average_regret(sim["amsgrad"][:, 0], sim["grads"][:, 0])
    final_ams = float(sim["amsgrad"][-1, 0])
    tail = slice(int(0.9 * steps), steps)
    tail_adam = [float(sim["adam"][tail, j].mean()) for j in range(1, 1 + len(seeds))]
    tail_ams = [float(sim["amsgrad"][tail, j].mean()) for j in range(1, 1 + len(seeds))]

    m_adam_x, m_ams_x = Measure([final_adam]), Measure([final_ams])
    m_adam_r, m_ams_r = Measure([float(regret_adam[-1])]), Measure([float(regret_ams[-1])])
    m_tail_adam, m_tail_ams = Measure(tail_adam), Measure(tail_ams)
    claims = [
        Claim(
            key="amsgrad-online-adam",
            statement="Adam converges to the worst point x = +1 of Reddi et al.'s online problem",
            measured={"Adam x_T": m_adam_x, "Adam R_T/T": m_adam_r, "AMSGrad R_T/T": m_ams_r},
            paper="Adam drifts to x = +1, R_T/T ≈ 0.228 after 10^6 steps (ANCHORS.md)",
            rule="Adam x_T ≥ 0.9 and Adam's R_T/T > AMSGrad's",
            verdict=verdict(rule_adam_wrong_end(final_adam, regret_adam[-1], regret_ams[-1]), defect=True),
        ),
        Claim(
            key="amsgrad-online-amsgrad",
            statement="AMSGrad converges to the optimum x = -1 of the same problem",
            measured={"AMSGrad x_T": m_ams_x, "AMSGrad R_T/T": m_ams_r},
            paper="AMSGrad reaches x ≈ -0.997, R_T/T ≈ 0.034 after 10^6 steps (ANCHORS.md)",
            rule="AMSGrad x_T ≤ -0.9",
            verdict=verdict(rule_amsgrad_converges(final_ams)),
        ),
        Claim(
            key="amsgrad-stochastic",
            statement="Stochastic variant: Adam settles at the wrong end, AMSGrad near the optimum",
            measured={"Adam mean x, last 10 %": m_tail_adam, "AMSGrad mean x, last 10 %": m_tail_ams},
            paper="Adam converges to x = +1, AMSGrad to the optimum x = -1 (Reddi et al., Fig. 1 centre)",
            rule="mean over seeds of mean x over the last 10 % of steps: Adam > 0.5 and AMSGrad < -0.5",
            verdict=verdict(rule_stochastic(m_tail_adam.mean, m_tail_ams.mean), defect=True),
        ),
    ]

    t = np.arange(1, steps + 1)
    keep = np.unique(np.geomspace(1, steps, 2000).astype(int)) - 1
    fig, (ax1, ax2) = new_figure(ncols=2)
    ax1.plot(t[keep], sim["adam"][keep, 0], label="Adam")
    ax1.plot(t[keep], sim["amsgrad"][keep, 0], label="AMSGrad")
    ax1.axhline(-1, color="grey", linestyle=":", label="optimum x* = -1")
    ax1.set(xscale="log", xlabel="step t (log scale)", ylabel="iterate x_t (dimensionless)", title="Online problem: iterate x_t")
    ax1.legend()
    ax2.plot(t[keep], regret_adam[keep], label="Adam")
    ax2.plot(t[keep], regret_ams[keep], label="AMSGrad")
    ax2.set(xscale="log", yscale="log", xlabel="step t (log scale)", ylabel="average regret R_t / t (loss units)", title="Online problem: average regret")
    ax2.legend()
    figures = [Figure("amsgrad-online", fig, "Deterministic online problem: x_t and R_t/t for Adam and AMSGrad.")]

    if seeds:
        fig2, ax = new_figure()
        # stochastic runs: running mean of x over windows of 1 % of the steps, band over seeds
        window = max(1, steps // 100)
        centres = np.arange(window, steps + 1, window)
        for label, key in (("Adam", "adam"), ("AMSGrad", "amsgrad")):
            runs = sim[key][:, 1:].T
            means = np.array([[r[c - window : c].mean() for c in centres] for r in runs])
            line = ax.plot(centres, means.mean(axis=0), label=f"{label} (mean of {len(seeds)} seed(s))")[0]
            if len(seeds) > 1:
                ax.fill_between(centres, means.min(axis=0), means.max(axis=0), color=line.get_color(), alpha=0.2)
        ax.axhline(-1, color="grey", linestyle=":", label="optimum x* = -1")
        ax.set(xscale="log", xlabel="step t (log scale)", ylabel=f"x averaged over {window} steps", title="Stochastic online problem: iterate (band: min-max over seeds)")
        ax.legend()
        figures.append(Figure("amsgrad-stochastic", fig2, "Stochastic variant: large gradient with probability 1/101."))

    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source="Reddi, Kale & Kumar (2018), Sec. 3 and Fig. 1",
        setup={
            "problem": "f_t(x) = 1010x if t mod 101 = 1 else -10x, x in [-1, 1]; stochastic: 1010x with probability 1/101",
            "optimizers": "adamkit.Adam and adamkit.Adam(amsgrad=True), torch convention (bias correction on, eps=1e-8), float64",
            "hyperparameters": f"alpha_t = {ALPHA}/sqrt(t), betas {BETAS}, projection onto [-1, 1] after each step",
            "steps": steps,
            "seeds (stochastic variant)": seeds,
        },
        claims=claims,
        figures=figures,
        seeds=seeds,
    )
