"""Experiment 7: decoupled weight decay (Loshchilov & Hutter, 2019).

Part 1 (our own demonstration, not a paper figure), a diagonal quadratic
f(θ) = ½ Σ s_i (θ_i − c_i)² with scales s = (1, 100): Adam with L2 (λθ added to the
gradient) has its fixed point where the regularised gradient vanishes,
θ_i = s_i c_i / (s_i + λ): the flat coordinate is shrunk far more than the steep one.
AdamW's fixed point is where the normalised step m̂/√v̂ balances the decay λθ; while
|∇f| ≫ ε that step is ±1 in every coordinate, so every coordinate ends at 1/λ
whatever its curvature.

Part 2, a real network in L&H's regime: a BatchNorm network (their Fig. 2 trains a ResNet with
BatchNorm; the weights feeding a BatchNorm layer are scale-invariant, so decay acts through
their effective learning rate, the effect the paper is about) on the bundled 8x8 digits, trained
long enough that the total decay λ·Σ η_t spans about 0.1–10. For each learning rate α of a grid
over two decades, the decay λ is tuned on a bracketed 2× grid, for Adam + L2 and for AdamW in
the paper's form (decay λ·η_t, η_t the cosine schedule multiplier, ``decoupled_lr=True``). L&H
(Fig. 2) find AdamW's good region "separable": the best decay depends much less on α. Measured
as the slope of log(best λ) against log(α), with a bootstrap interval over seeds (best λ refined
by a parabola in log λ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import data, stats
from .common import DEMONSTRATION, Claim, ExperimentResult, Figure, Measure, make_optimizer, new_figure, plot_tuning, seed_everything
from .runner import Runner
from .tuning import tune, tuning_seeds as held_out_seeds

NAME = "weight-decay"
TITLE = "Decoupled weight decay: Adam + L2 vs AdamW"

SCALES = (1.0, 100.0)
CENTRE = (2.0, 2.0)
LAMBDA = 1.0
METHODS = {"Adam + L2": 1e-3, "AdamW": None}  # L2 start; AdamW starts where the total decay is 1
PAPER_REF = "Loshchilov & Hutter (2019), Fig. 2"


@dataclass
class Settings:
    quadratic_steps: int
    lrs: list[float]
    n_train: int
    hidden: int
    steps: int
    tuning_seeds: int = 2
    batch_size: int = 50
    max_points: int = 10

    @classmethod
    def quick(cls) -> "Settings":
        return cls(quadratic_steps=3000, lrs=[1e-4, 1e-2], n_train=300, hidden=32, steps=150, tuning_seeds=1, max_points=6)

    @classmethod
    def full(cls) -> "Settings":
        return cls(quadratic_steps=20000, lrs=[1e-4, 1e-3, 1e-2], n_train=200, hidden=128, steps=2000, max_points=12)  # two decades of α


def estimated_runs(settings: Settings, n_seeds: int) -> int:
    return 1 + len(METHODS) * len(settings.lrs) * 6 * (n_seeds + settings.tuning_seeds)


# -- part 1 ---------------------------------------------------------------------------


def quadratic_fixed_points(steps: int) -> dict[str, list[float]]:
    """Final θ of Adam+L2 and AdamW (both λ = 1, lr 0.05/√t) on the diagonal quadratic, float64."""
    s, c = torch.tensor(SCALES, dtype=torch.float64), torch.tensor(CENTRE, dtype=torch.float64)
    finals = {}
    for name in ("Adam + L2", "AdamW"):
        theta = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        if name == "AdamW":
            optimizer = make_optimizer("AdamW", [theta], 0.05, weight_decay=LAMBDA)
        else:
            optimizer = make_optimizer("Adam", [theta], 0.05, weight_decay=LAMBDA)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0 / math.sqrt(k + 1))
        for step in range(steps):
            theta.grad = s * (theta.detach() - c)  # ∇f, the L2 / decay term is the optimizer's
            optimizer.step()
            schedule.step()
        finals[name] = theta.detach().numpy().tolist()
    return finals


def rule_quadratic(finals: dict[str, np.ndarray]) -> bool:
    """Adam+L2 within 1e-3 (relative) of s c/(s + λ); AdamW's two coordinates equal within 1e-3 (relative)."""
    s, c = np.array(SCALES), np.array(CENTRE)
    predicted = s * c / (s + LAMBDA)
    l2_ok = np.all(np.abs(np.asarray(finals["Adam + L2"]) - predicted) <= 1e-3 * np.abs(predicted))
    w = np.asarray(finals["AdamW"])
    adamw_ok = abs(w[0] - w[1]) <= 1e-3 * max(abs(w[0]), abs(w[1]))
    return bool(l2_ok and adamw_ok)


# -- part 2 ---------------------------------------------------------------------------


def bn_network(hidden: int) -> nn.Sequential:
    """64 → hidden → 10 with BatchNorm between the hidden layer's linear map and its ReLU."""
    return nn.Sequential(nn.Linear(64, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 10))


def trial(method: str, lr: float, decay: float, seed: int, n_train: int, hidden: int, steps: int, batch_size: int) -> dict:
    """Test cross-entropy (mean of the last 10 % of evaluations, BatchNorm in evaluation mode) after ``steps`` steps with cosine
    annealing to 0; every parameter decayed, as in L&H's experiments."""
    split = data.digits(n_train, seed=seed)
    generator = seed_everything(seed)
    model = bn_network(hidden)
    if method == "AdamW":
        optimizer = make_optimizer("AdamW", model.parameters(), lr, weight_decay=decay, decoupled_lr=True)
    else:
        optimizer = make_optimizer("Adam", model.parameters(), lr, weight_decay=decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    evaluations = []
    every = max(1, steps // 50)
    for step in range(steps):
        index = torch.randint(len(split.x_train), (batch_size,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(split.x_train[index]), split.y_train[index]).backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % every == 0:
            model.eval()
            with torch.no_grad():
                value = float(nn.functional.cross_entropy(model(split.x_test), split.y_test))
            model.train()
            evaluations.append(value if math.isfinite(value) else math.inf)
            if not math.isfinite(value):
                break
    return {"test_loss": stats.tail_mean(evaluations)}


def refined_minimum(values: list[float], scores: np.ndarray) -> float:
    """log10 of the best value: the vertex of a parabola through the best grid point and its neighbours
    in log10(value) (the grid point itself at an edge or when the parabola opens downwards)."""
    logs = np.log10(values)
    i = int(np.argmin(scores))
    if not np.isfinite(scores[i]) or i == 0 or i == len(values) - 1 or not np.all(np.isfinite(scores[i - 1 : i + 2])):
        return float(logs[i])
    a, b, _ = np.polyfit(logs[i - 1 : i + 2], scores[i - 1 : i + 2], 2)
    return float(-b / (2 * a)) if a > 0 else float(logs[i])


def slope(lrs: list[float], best_log_decay: list[float]) -> float:
    """Least-squares slope of log10(best λ) against log10(α)."""
    return float(np.polyfit(np.log10(lrs), best_log_decay, 1)[0])


def run(settings: Settings, seeds: list[int], runner: Runner) -> ExperimentResult:
    pending = runner.submit(quadratic_fixed_points, {"steps": settings.quadratic_steps})
    half_steps = settings.steps / 2  # Σ η_t for cosine annealing to 0
    start = {}
    for method in METHODS:
        for lr in settings.lrs:
            start[f"{method}, α = {lr:g}"] = METHODS[method] if METHODS[method] is not None else 1.0 / half_steps
    parse = {name: (name.split(", α = ")[0], float(name.split(", α = ")[1])) for name in start}
    make = lambda name, decay, seed: {"method": parse[name][0], "lr": parse[name][1], "decay": decay, "seed": seed,  # noqa: E731
                                      "n_train": settings.n_train, "hidden": settings.hidden, "steps": settings.steps,
                                      "batch_size": settings.batch_size}
    # the grid's extent is found on tuning seeds that are never evaluated; the best λ itself is located
    # again inside every bootstrap resample of the evaluation seeds (slope_of)
    curves, results = tune(runner, trial, make, lambda r: r["test_loss"], start, held_out_seeds(seeds, settings.tuning_seeds), parameter="λ",
                           max_points=settings.max_points, score_name="test cross-entropy, mean of the last 10 % of evaluations")
    # every grid point on every seed, so the slope's interval can resample seeds
    missing = [(n, v, s) for n, c in curves.items() for v in c.values for s in seeds if (n, v, s) not in results]
    for job, output in zip(missing, runner.map(trial, [make(*j) for j in missing])):
        results[job] = output
    table = {n: np.array([[results[(n, v, s)]["test_loss"] for v in c.values] for s in seeds]) for n, c in curves.items()}

    def slope_of(method: str, rows: np.ndarray) -> float:
        names = [f"{method}, α = {lr:g}" for lr in settings.lrs]
        best = [refined_minimum(curves[n].values, table[n][rows].mean(axis=0)) for n in names]
        return slope(settings.lrs, best)

    slopes = {m: stats.bootstrap_statistic(len(seeds), lambda rows, m=m: slope_of(m, rows), f"{m}: slope of log10(best λ) vs log10(α)")
              for m in METHODS}
    difference = stats.bootstrap_statistic(len(seeds), lambda rows: abs(slope_of("Adam + L2", rows)) - abs(slope_of("AdamW", rows)),
                                           "|slope Adam+L2| − |slope AdamW| (seeds resampled together)")
    best_decay = {n: 10 ** refined_minimum(c.values, table[n].mean(axis=0)) for n, c in curves.items()}

    finals = pending.result()
    s, c = np.array(SCALES), np.array(CENTRE)
    predicted = s * c / (s + LAMBDA)
    holds_q = rule_quadratic(finals)
    claims = [
        Claim(
            key="weight-decay-quadratic",
            statement="On a diagonal quadratic Adam+L2 shrinks coordinates by s/(s+λ), AdamW shrinks all coordinates equally",
            paper_ref="our own demonstration, illustrating Loshchilov & Hutter (2019), Sec. 2",
            kind=DEMONSTRATION,
            paper_statement="decoupling on a diagonal quadratic is our own demonstration, not a paper figure: Adam + L2 has its fixed point "
                            "depend on the curvature s; AdamW's does not",
            measured={
                f"{label} θ/c at s={scale:g}": Measure([float(value)])
                for label, values in (("Adam+L2", np.asarray(finals["Adam + L2"]) / c), ("predicted s/(s+λ)", predicted / c),
                                      ("AdamW", np.asarray(finals["AdamW"]) / c))
                for scale, value in zip(SCALES, values)
            },
            rule="Adam+L2 within 1e-3 relative of s·c/(s+λ) in both coordinates; AdamW's coordinates equal within 1e-3 relative "
                 "(deterministic, float64)",
            intervals=[stats.bootstrap_interval([float(np.max(np.abs(np.asarray(finals["Adam + L2"]) - predicted) / predicted))],
                                                "Adam+L2 largest relative gap to s·c/(s+λ) (deterministic)")],
            holds=holds_q,
        ),
        Claim(
            key="weight-decay-separable",
            statement="AdamW's best weight decay depends less on the learning rate than Adam+L2's (more separable)",
            paper_ref=PAPER_REF,
            paper_statement="decoupled weight decay \"decouples the optimal choice of weight decay factor from the setting of the learning "
                            "rate\" (abstract); with L2 the best λ moves with the learning rate (Fig. 2: ResNet with BatchNorm on CIFAR-10, "
                            "a grid of learning rates and decays)",
            measured={f"{m} slope": Measure([slopes[m].estimate]) for m in METHODS}
            | {f"best λ, {n}": Measure([best_decay[n]]) for n in curves},
            rule="95 % bootstrap interval (seeds resampled) of |slope Adam+L2| − |slope AdamW| above 0; slope = least-squares slope of "
                 "log10(best λ) against log10(α), best λ by a parabola through the best grid point and its neighbours",
            intervals=[difference, *slopes.values()],
            holds=stats.above(difference, 0.0),
            tuning=list(curves.values()),
            steps=settings.steps,
        ),
    ]
    fig, (ax1, ax2) = new_figure(ncols=2)
    plot_tuning(ax1, list(curves.values()), "test cross-entropy (nats, log)", "Decay tuning curves per (method, α)")
    for k, method in enumerate(METHODS):
        ys = [best_decay[f"{method}, α = {lr:g}"] for lr in settings.lrs]
        ax2.plot(settings.lrs, ys, marker="o", color=f"C{k}", label=f"{method}: slope {slopes[method].text(2)}")
    ax2.set(xscale="log", yscale="log", xlabel="learning rate α (log)", ylabel="best λ (log)",
            title="Best decay against the learning rate (flat = separable)")
    ax2.legend(fontsize=8)
    fig2, ax = new_figure()
    ax.bar(np.arange(2) - 0.2, predicted, 0.4, label="Adam+L2 prediction s·c/(s+λ)", color="lightgrey")
    ax.plot(np.arange(2) - 0.2, finals["Adam + L2"], "o", label="Adam+L2 measured", color="C0")
    ax.bar(np.arange(2) + 0.2, finals["AdamW"], 0.4, label="AdamW measured", color="C1")
    ax.axhline(CENTRE[0], color="grey", linestyle=":", label="unregularised optimum c")
    ax.set(xticks=range(2), xticklabels=[f"s = {SCALES[0]:g}", f"s = {SCALES[1]:g}"], ylabel="final θ_i (dimensionless)",
           title=f"Diagonal quadratic, λ = {LAMBDA:g}: fixed points")
    ax.legend()
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source="Loshchilov & Hutter (2019), Sec. 2-3 and Fig. 2",
        setup={
            "quadratic": f"f(θ) = ½ Σ s_i (θ_i − c_i)², s = {SCALES}, c = {CENTRE}, λ = {LAMBDA}; lr 0.05/√t, "
                         f"{settings.quadratic_steps} steps, float64; adamkit.Adam(weight_decay=λ) and adamkit.AdamW(weight_decay=λ)",
            "network data": f"scikit-learn digits, {settings.n_train} train / {1797 - settings.n_train} test",
            "network": f"64-{settings.hidden}-10 ReLU network with BatchNorm before the ReLU (every parameter decayed), batch {settings.batch_size} drawn with replacement, {settings.steps} steps, "
                       f"cosine annealing of the lr to 0 (Σ η_t = {half_steps:g}, so AdamW's total decay λ·Σ η_t = 1 at λ = {1 / half_steps:g})",
            "grid": {"learning rates": settings.lrs, "λ": "2× log grid per (method, α), extended until bracketed, equal trials"},
            "score": "test cross-entropy, mean of the last 10 % of evaluations (smoother than the error on 800 images)",
            "seeds": seeds,
        },
        deviations=[
            "CIFAR-10 ResNet → a one-hidden-layer BatchNorm network on the 8x8 scikit-learn digits",
            f"α ∈ {settings.lrs} (two decades)",
            "scored by test cross-entropy (L&H: test error)",
            f"{settings.steps} steps; the interval comes from {len(seeds)} seeds",
        ],
        claims=claims,
        figures=[
            Figure("weight-decay-quadratic", fig2, "Fixed points on the diagonal quadratic."),
            Figure("weight-decay-separability", fig, "Decay tuning curves for every learning rate, and the best decay against the learning rate."),
        ],
        seeds=seeds,
        extra={"best_decay": best_decay},
    )
