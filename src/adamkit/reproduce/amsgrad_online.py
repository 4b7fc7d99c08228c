"""Experiment 5: Reddi et al.'s online problem where Adam converges to the worst point.

f_t(x) = 1010 x if t mod 101 = 1 else −10 x on x in [−1, 1] (Reddi, Kale & Kumar,
2018, Sec. 3, Fig. 1 left/centre). The sum over a period is 10 x, so the best fixed
point is x = −1; Adam's rare large gradient is forgotten by v_t within a period and
the many small ones push x to +1. AMSGrad's running max keeps the large gradient in
the denominator. The stochastic version (Fig. 1 right) draws the large gradient with
probability 0.01 at each step: E[f_t] = 0.2 x, optimum −1.

The paper gives no α; the deterministic run uses α = 0.5 (our choice), the
stochastic one sweeps α on a bracketed 2× grid for AMSGrad (scored by the expected
excess loss 0.2 (x̄ + 1) over the last 10 % of steps) and reports Adam on the same
grid. Adam and AMSGrad live in one adamkit.Adam with two parameter groups; each
parameter is a vector whose elements are independent seeds of the stochastic problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import adamkit

from . import stats
from .common import Claim, ExperimentResult, Figure, Measure, new_figure, plot_tuning
from .runner import Runner
from .tuning import tune, tuning_seeds

NAME = "amsgrad"
TITLE = "AMSGrad: Reddi et al.'s online problem"

PERIOD = 101
P_BIG = 0.01  # stochastic version: probability of the large gradient (Reddi et al., Fig. 1 right)
BIG, SMALL = 1010.0, -10.0
BETAS = (0.9, 0.99)
ALPHA = 0.5
NEAR = 0.9  # "converges to ±1": the tail mean of x within 0.1 of the end
PAPER_REF = "Reddi, Kale & Kumar (2018), Sec. 3 and 6, Fig. 1"


@dataclass
class Settings:
    steps: int  # deterministic problem
    stochastic_steps: int
    chunk: int = 10_000

    @classmethod
    def quick(cls) -> "Settings":
        return cls(steps=20_000, stochastic_steps=5_000)

    @classmethod
    def full(cls) -> "Settings":
        return cls(steps=300_000, stochastic_steps=50_000)


def estimated_runs(settings: Settings, n_seeds: int) -> int:
    return 1 + 7


def _gradients(start: int, length: int, generators: list[torch.Generator], deterministic: bool) -> torch.Tensor:
    """Gradients for steps start+1 .. start+length, one column per run."""
    if deterministic:
        t = torch.arange(start + 1, start + length + 1)
        return torch.where(t % PERIOD == 1, BIG, SMALL).to(torch.float64)[:, None]
    grads = torch.empty(length, len(generators), dtype=torch.float64)
    for j, generator in enumerate(generators):
        big = torch.rand(length, generator=generator, dtype=torch.float64) < P_BIG
        grads[:, j] = torch.where(big, BIG, SMALL)
    return grads


def simulate(steps: int, seeds: list[int], alpha: float = ALPHA, deterministic: bool = True, chunk: int = 10_000) -> dict[str, np.ndarray]:
    """Adam and AMSGrad (torch convention, eps=1e-8, float64), α_t = α/√t, projection onto [−1, 1].

    Returns x_t before each step for both (arrays (steps, runs)) and the gradients seen.
    Deterministic: one run; stochastic: one run per seed.
    """
    width = 1 if deterministic else len(seeds)
    x_adam = torch.nn.Parameter(torch.zeros(width, dtype=torch.float64))
    x_ams = torch.nn.Parameter(torch.zeros(width, dtype=torch.float64))
    optimizer = adamkit.Adam([{"params": [x_adam], "amsgrad": False}, {"params": [x_ams], "amsgrad": True}], lr=alpha, betas=BETAS)
    generators = [torch.Generator().manual_seed(1000 + s) for s in seeds]
    history = {"adam": torch.empty(steps, width, dtype=torch.float64), "amsgrad": torch.empty(steps, width, dtype=torch.float64)}
    grads_seen = torch.empty(steps, width, dtype=torch.float64)
    for start in range(0, steps, chunk):
        length = min(chunk, steps - start)
        grads = _gradients(start, length, generators, deterministic)
        grads_seen[start : start + length] = grads
        for i in range(length):
            t = start + i + 1
            history["adam"][t - 1] = x_adam.detach()
            history["amsgrad"][t - 1] = x_ams.detach()
            x_adam.grad = grads[i].clone()
            x_ams.grad = grads[i].clone()
            lr = alpha / t**0.5  # α_t = α/√t
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            with torch.no_grad():  # projection onto the feasible set [−1, 1]
                x_adam.clamp_(-1.0, 1.0)
                x_ams.clamp_(-1.0, 1.0)
    return {"adam": history["adam"].numpy(), "amsgrad": history["amsgrad"].numpy(), "grads": grads_seen.numpy()}


def deterministic_task(steps: int, chunk: int) -> dict:
    sim = simulate(steps, [0], ALPHA, True, chunk)
    keep = np.unique(np.geomspace(1, steps, 1500).astype(int)) - 1
    return {
        "x_adam": float(sim["adam"][-1, 0]), "x_amsgrad": float(sim["amsgrad"][-1, 0]),
        "regret_adam": float(average_regret(sim["adam"][:, 0], sim["grads"][:, 0])[-1]),
        "regret_amsgrad": float(average_regret(sim["amsgrad"][:, 0], sim["grads"][:, 0])[-1]),
        "t": (keep + 1).tolist(), "path_adam": sim["adam"][keep, 0].tolist(), "path_amsgrad": sim["amsgrad"][keep, 0].tolist(),
    }


def stochastic_task(alpha: float, steps: int, seeds: list[int], chunk: int) -> dict:
    """Per seed: mean x over the last 10 % of steps, for Adam and AMSGrad at this α."""
    sim = simulate(steps, seeds, alpha, False, chunk)
    tail = slice(steps - max(1, steps // 10), steps)
    window = max(1, steps // 100)
    centres = np.arange(window, steps + 1, window)
    return {
        "tail_adam": [float(v) for v in sim["adam"][tail].mean(axis=0)],
        "tail_amsgrad": [float(v) for v in sim["amsgrad"][tail].mean(axis=0)],
        "centres": centres.tolist(),
        "path_adam": [[float(sim["adam"][c - window : c, j].mean()) for c in centres] for j in range(len(seeds))],
        "path_amsgrad": [[float(sim["amsgrad"][c - window : c, j].mean()) for c in centres] for j in range(len(seeds))],
    }


def average_regret(x: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """R_t / t for the linear losses f_t(x) = g_t x against the best fixed x in [−1, 1]."""
    cumulative = np.cumsum(grads * x)
    best = -np.abs(np.cumsum(grads))  # min over x in [−1, 1] of x · Σg
    t = np.arange(1, len(x) + 1)
    return (cumulative - best) / t


def excess(tail_x: list[float]) -> float:
    """Expected excess loss of the stochastic problem, E[f](x̄) − E[f](−1) = 0.2 (x̄ + 1), averaged over seeds."""
    return 0.2 * (float(np.mean(tail_x)) + 1.0)


def run(settings: Settings, seeds: list[int], runner: Runner) -> ExperimentResult:
    pending = runner.submit(deterministic_task, {"steps": settings.steps, "chunk": settings.chunk})  # runs alongside the sweep
    # α sweep of the stochastic problem: one task per α runs every seed (elements of one vector)
    # α is tuned on seeds of its own (never evaluated); the grid is then run on the evaluation seeds
    held_out = tuning_seeds(seeds, len(seeds))
    make = lambda name, alpha, _seed: {"alpha": alpha, "steps": settings.stochastic_steps, "seeds": held_out, "chunk": settings.chunk}  # noqa: E731
    curves, tuned = tune(runner, stochastic_task, make, lambda r: excess(r["tail_amsgrad"]), {"AMSGrad": 1.0}, [0],
                           score_name="expected excess loss 0.2 (x̄ + 1), x̄ = mean x over the last 10 % of steps, mean over seeds")
    det = pending.result()
    ams_curve = curves["AMSGrad"]
    ams_curve.seeds = held_out  # one task runs all of them
    evaluated = runner.map(stochastic_task, [{"alpha": a, "steps": settings.stochastic_steps, "seeds": list(seeds), "chunk": settings.chunk}
                                             for a in ams_curve.values])
    results = {("AMSGrad", a, 0): r for a, r in zip(ams_curve.values, evaluated)}
    chosen = results[("AMSGrad", ams_curve.chosen, 0)]
    adam_by_alpha = {alpha: results[("AMSGrad", alpha, 0)]["tail_adam"] for alpha in ams_curve.values}
    adam_best_per_seed = [min(adam_by_alpha[a][j] for a in ams_curve.values) for j in range(len(seeds))]

    det_adam = stats.bootstrap_interval([det["x_adam"]], "Adam x_T (deterministic: one run)")
    det_ams = stats.bootstrap_interval([det["x_amsgrad"]], "AMSGrad x_T (deterministic: one run)")
    sto_adam = stats.bootstrap_interval(adam_best_per_seed, "Adam: per seed, the lowest tail mean of x over the α grid")
    sto_ams = stats.bootstrap_interval(chosen["tail_amsgrad"], f"AMSGrad tail mean of x at α = {ams_curve.chosen:g}")
    claims = [
        Claim(
            key="amsgrad-online-adam",
            statement="Adam converges to the worst point x = +1 of Reddi et al.'s online problem",
            paper_ref=PAPER_REF + " (left/centre)",
            paper_statement="online problem f_t(x) = 1010·x if t mod 101 = 1 else −10·x on [−1, 1]: Adam converges to +1 (no α or regret numbers given)",
            reference="reference run (ours): α_t = 0.5/√t, β = (0.9, 0.99), 10^6 steps: Adam R_T/T ≈ 0.228",
            measured={"Adam x_T": Measure([det["x_adam"]]), "Adam R_T/T": Measure([det["regret_adam"]]),
                      "AMSGrad R_T/T": Measure([det["regret_amsgrad"]])},
            rule="Adam x_T ≥ 0.9 (deterministic, one run: no interval needed)",
            intervals=[det_adam],
            holds=stats.above(det_adam, 0.9 - 1e-12),
            defect=True,
            budget=f"{settings.steps:,} steps, α = {ALPHA}",
            steps=settings.steps,
        ),
        Claim(
            key="amsgrad-online-amsgrad",
            statement="AMSGrad converges to the optimum x = −1 of the same problem",
            paper_ref=PAPER_REF + " (left/centre)",
            paper_statement="on the same online problem AMSGrad converges to the optimum x = −1",
            reference="reference run (ours): α_t = 0.5/√t, β = (0.9, 0.99), 10^6 steps: AMSGrad x ≈ −0.997, R_T/T ≈ 0.034",
            measured={"AMSGrad x_T": Measure([det["x_amsgrad"]]), "AMSGrad R_T/T": Measure([det["regret_amsgrad"]])},
            rule="AMSGrad x_T ≤ −0.9 (deterministic, one run)",
            intervals=[det_ams],
            holds=stats.below(det_ams, -0.9 + 1e-12),
            budget=f"{settings.steps:,} steps, α = {ALPHA}",
            steps=settings.steps,
        ),
        Claim(
            key="amsgrad-stochastic",
            statement=f"Stochastic version (large gradient with probability 0.01): Adam converges to the wrong end (x ≥ {NEAR}) for every α, "
                      f"AMSGrad to the optimum (x ≤ −{NEAR}) at its tuned α",
            paper_ref=PAPER_REF + " (right)",
            paper_statement="Sec. 6, Fig. 1 (right), the stochastic setting (large gradient with probability 0.01): as in the online "
                            "setting, Adam converges to the highly suboptimal solution x = +1 and AMSGrad to the optimum x = −1",
            measured={f"Adam tail mean x, lowest over α ∈ [{min(ams_curve.values):g}, {max(ams_curve.values):g}]": Measure(adam_best_per_seed),
                      f"AMSGrad tail mean x (α = {ams_curve.chosen:g})": Measure(chosen["tail_amsgrad"])},
            rule=f"95 % bootstrap intervals over the evaluation seeds: Adam's lowest tail mean of x over the whole α grid > {NEAR}, and "
                 f"AMSGrad's at its tuned α (tuned on other seeds) < −{NEAR} (\"converges to\" an end: within 0.1 of it)",
            intervals=[sto_adam, sto_ams],
            holds=stats.combine(stats.above(sto_adam, NEAR), stats.below(sto_ams, -NEAR)),
            defect=True,
            tuning=[ams_curve],
            budget=f"{settings.stochastic_steps:,} steps, α_t = α/√t",
            steps=settings.stochastic_steps,
        ),
    ]

    fig, (ax1, ax2) = new_figure(ncols=2)
    ax1.plot(det["t"], det["path_adam"], label="Adam")
    ax1.plot(det["t"], det["path_amsgrad"], label="AMSGrad")
    ax1.axhline(-1, color="grey", linestyle=":", label="optimum x* = −1")
    ax1.set(xscale="log", xlabel="step t (log scale)", ylabel="iterate x_t (dimensionless)", title=f"Deterministic problem, α = {ALPHA}")
    ax1.legend()
    alphas = ams_curve.values
    ax2.plot(alphas, [np.mean(adam_by_alpha[a]) for a in alphas], marker="o", label="Adam, mean tail x")
    ax2.plot(alphas, [np.mean(results[("AMSGrad", a, 0)]["tail_amsgrad"]) for a in alphas], marker="o", label="AMSGrad, mean tail x")
    ax2.plot([ams_curve.chosen], [np.mean(chosen["tail_amsgrad"])], "*", markersize=14, color="C1", markeredgecolor="k")
    ax2.axhline(-1, color="grey", linestyle=":")
    ax2.set(xscale="log", xlabel="α (α_t = α/√t; log grid; star: AMSGrad's chosen α)", ylabel="mean x over the last 10 % of steps",
            title=f"Stochastic problem: α sweep ({len(seeds)} seeds)")
    ax2.legend()
    fig2, ax = new_figure()
    for label, key, colour in (("Adam", "path_adam", "C0"), ("AMSGrad", "path_amsgrad", "C1")):
        paths = np.array(chosen[key])
        ax.plot(chosen["centres"], paths.mean(axis=0), color=colour, label=f"{label} (α = {ams_curve.chosen:g}, mean of {len(seeds)} seeds)")
        if len(seeds) > 1:
            ax.fill_between(chosen["centres"], paths.min(axis=0), paths.max(axis=0), color=colour, alpha=0.2)
    ax.axhline(-1, color="grey", linestyle=":", label="optimum x* = −1")
    ax.set(xscale="log", xlabel="step t (log scale)", ylabel="x averaged over 1 % of the steps", title="Stochastic problem at AMSGrad's tuned α (band: min-max over seeds)")
    ax.legend()
    fig3, ax3 = new_figure()
    plot_tuning(ax3, [ams_curve], "expected excess loss 0.2 (x̄ + 1) (log)", "AMSGrad's α tuning curve (stochastic problem)")
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source=PAPER_REF,
        setup={
            "problem": "f_t(x) = 1010x if t mod 101 = 1 else −10x, x in [−1, 1]; stochastic: 1010x with probability 0.01, else −10x",
            "optimizers": "adamkit.Adam and adamkit.Adam(amsgrad=True), torch convention (bias correction on, eps=1e-8), float64",
            "hyperparameters": f"α_t = α/√t, betas {BETAS}, projection onto [−1, 1] after each step; deterministic α = {ALPHA}; stochastic α on a bracketed 2× grid",
            "steps": {"deterministic": settings.steps, "stochastic": settings.stochastic_steps},
            "seeds (stochastic version)": seeds,
        },
        deviations=[
            "the paper gives no α: α = 0.5 (deterministic) is our choice, the stochastic α is swept",
            "AMSGrad in torch's convention (bias correction, ε = 1e-8), not the paper's Algorithm 2 without bias correction",
            f"stochastic horizon {settings.stochastic_steps:,} steps",
        ],
        claims=claims,
        figures=[Figure("amsgrad-online", fig, "Deterministic problem (x_t), and the stochastic problem's α sweep."),
                 Figure("amsgrad-stochastic", fig2, "Stochastic problem at AMSGrad's tuned α."),
                 Figure("amsgrad-tuning", fig3, "AMSGrad's tuning curve on the stochastic problem.")],
        seeds=seeds,
        extra={"regret_deterministic": {"adam": det["regret_adam"], "amsgrad": det["regret_amsgrad"]}},
    )
