"""Experiment 7: decoupled weight decay (Loshchilov & Hutter, 2019).

Part 1, a diagonal quadratic f(θ) = ½ Σ s_i (θ_i − c_i)² with scales s = (1, 100):
Adam with L2 (λθ added to the gradient) has its fixed point where the regularised
gradient vanishes, θ_i = s_i c_i / (s_i + λ): the flat coordinate is shrunk far
more than the steep one. AdamW's fixed point is where the normalised step m̂/√v̂
balances the decay λθ; while |∇f| ≫ ε that step is ±1 in every coordinate, so
every coordinate ends at 1/λ whatever its curvature: decay acts equally.

Part 2, a real network (an MLP on the bundled 8x8 digits) trained over a grid of
learning rate × weight decay for Adam+L2 and AdamW (the paper's form: decay
λ·η_t with η_t the cosine schedule multiplier, ``decoupled_lr=True``). L&H
(Fig. 2) find AdamW's good region "separable": the best decay barely depends on
the learning rate. Measured here as the spread, in decades, of the best decay
over the learning rates that come within 1 percentage point of the best cell.
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

NAME = "weight-decay"
TITLE = "Decoupled weight decay: Adam + L2 vs AdamW"

SCALES = (1.0, 100.0)
CENTRE = (2.0, 2.0)
LAMBDA = 1.0


@dataclass
class Settings:
    quadratic_steps: int
    lrs: list[float]
    l2_grid: list[float]
    decay_grid: list[float]
    n_train: int
    hidden: int
    epochs: int

    @classmethod
    def quick(cls) -> "Settings":
        return cls(quadratic_steps=3000, lrs=[1e-3, 3e-3, 1e-2], l2_grid=[1e-3, 1e-2, 1e-1],
                   decay_grid=[1e-4, 1e-3, 1e-2], n_train=400, hidden=64, epochs=15)

    @classmethod
    def full(cls) -> "Settings":
        return cls(quadratic_steps=20000, lrs=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2], l2_grid=[1e-4, 1e-3, 1e-2, 1e-1, 1.0],
                   decay_grid=[3e-5, 1e-4, 3e-4, 1e-3, 3e-3], n_train=500, hidden=256, epochs=40)


def total_work(settings: Settings, n_seeds: int) -> int:
    cells = len(settings.lrs) * (len(settings.l2_grid) + len(settings.decay_grid))
    return 2 * (settings.quadratic_steps // 1000) + cells * n_seeds * settings.epochs


# -- part 1 ---------------------------------------------------------------------------


def quadratic_fixed_points(steps: int, bar: Bar | None = None) -> dict[str, np.ndarray]:
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
            if bar is not None and (step + 1) % 1000 == 0:
                bar.update(1)
        finals[name] = theta.detach().numpy().copy()
    return finals


def rule_quadratic(finals: dict[str, np.ndarray]) -> bool:
    """Adam+L2 within 1e-3 (relative) of s c/(s + λ); AdamW's two coordinates equal within 1e-3 (relative)."""
    s, c = np.array(SCALES), np.array(CENTRE)
    predicted = s * c / (s + LAMBDA)
    l2_ok = np.all(np.abs(finals["Adam + L2"] - predicted) <= 1e-3 * np.abs(predicted))
    w = finals["AdamW"]
    adamw_ok = abs(w[0] - w[1]) <= 1e-3 * max(abs(w[0]), abs(w[1]))
    return bool(l2_ok and adamw_ok)


# -- part 2 ---------------------------------------------------------------------------


def best_decay_spread(errors: np.ndarray, lrs: list[float], decays: list[float], tolerance: float = 0.01) -> float:
    """Spread (decades) of the best decay across the learning rates whose best error is within
    ``tolerance`` of the grid's best. ``errors[i, j]`` is the error at lrs[i], decays[j]."""
    row_best = errors.min(axis=1)
    good = row_best <= errors.min() + tolerance
    best_decays = [decays[int(np.argmin(errors[i]))] for i in range(len(lrs)) if good[i]]
    return float(np.log10(max(best_decays)) - np.log10(min(best_decays)))


def rule_separable(spread_adamw: float, spread_adam: float) -> bool:
    """AdamW's best decay spreads over fewer decades of decay than Adam+L2's."""
    return spread_adamw < spread_adam


def heat_map_errors(settings: Settings, seeds: list[int], method: str, bar: Bar | None = None) -> np.ndarray:
    """Test error (fraction) per seed, shape (seeds, lrs, decays)."""
    grid = settings.decay_grid if method == "AdamW" else settings.l2_grid
    errors = np.zeros((len(seeds), len(settings.lrs), len(grid)))
    for k, seed in enumerate(seeds):
        split = data.digits(settings.n_train, seed=seed)
        steps = settings.epochs * math.ceil(settings.n_train / 50)
        for i, lr in enumerate(settings.lrs):
            for j, wd in enumerate(grid):
                generator = seed_everything(seed)
                model = mlp([64, settings.hidden, 10])
                if method == "AdamW":
                    optimizer = make_optimizer("AdamW", model.parameters(), lr, weight_decay=wd, decoupled_lr=True)
                else:
                    optimizer = make_optimizer("Adam", model.parameters(), lr, weight_decay=wd)
                schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
                train_classifier(model, optimizer, split.x_train, split.y_train, epochs=settings.epochs,
                                 batch_size=50, generator=generator, scheduler=schedule, bar=bar, evals_per_epoch=0)
                errors[k, i, j] = 1.0 - accuracy(model, split.x_test, split.y_test)
    return errors


def run(settings: Settings, seeds: list[int], bar: Bar | None = None) -> ExperimentResult:
    finals = quadratic_fixed_points(settings.quadratic_steps, bar)
    s, c = np.array(SCALES), np.array(CENTRE)
    predicted = s * c / (s + LAMBDA)
    claims = [
        Claim(
            key="weight-decay-quadratic",
            statement="On a diagonal quadratic Adam+L2 shrinks coordinates by s/(s+λ), AdamW shrinks all coordinates equally",
            measured={
                f"{label} θ/c at s={scale:g}": Measure([float(value)])
                for label, values in (("Adam+L2", finals["Adam + L2"] / c), ("predicted s/(s+λ)", predicted / c), ("AdamW", finals["AdamW"] / c))
                for scale, value in zip(SCALES, values)
            },
            paper="Adam+L2 converges to coordinates ∝ s/(s+λ); AdamW shrinks all coordinates equally (ANCHORS.md)",
            rule="Adam+L2 within 1e-3 relative of s·c/(s+λ) in both coordinates; AdamW's coordinates equal within 1e-3 relative",
            verdict=verdict(rule_quadratic(finals)),
        )
    ]
    err_adam = heat_map_errors(settings, seeds, "Adam + L2", bar)
    err_adamw = heat_map_errors(settings, seeds, "AdamW", bar)
    spread_adam = best_decay_spread(err_adam.mean(axis=0), settings.lrs, settings.l2_grid)
    spread_adamw = best_decay_spread(err_adamw.mean(axis=0), settings.lrs, settings.decay_grid)
    claims.append(
        Claim(
            key="weight-decay-separable",
            statement="AdamW's good (learning rate, weight decay) region is more separable than Adam+L2's",
            measured={
                "AdamW best-decay spread": Measure([spread_adamw], "decades"),
                "Adam+L2 best-decay spread": Measure([spread_adam], "decades"),
                "AdamW best test error": Measure(list(err_adamw.reshape(len(seeds), -1).min(axis=1))),
                "Adam+L2 best test error": Measure(list(err_adam.reshape(len(seeds), -1).min(axis=1))),
            },
            paper="AdamW's optimal weight decay is (nearly) independent of the learning rate; Adam+L2's is not (L&H 2019, Fig. 2)",
            rule="spread of the best decay across learning rates within 1 pp of the best cell: AdamW < Adam+L2",
            verdict=verdict(rule_separable(spread_adamw, spread_adam)),
        )
    )

    fig, axes = new_figure(width=5.2, height=4.2, ncols=2)
    from matplotlib.patches import Rectangle

    vmax = max(err_adam.mean(axis=0).max(), err_adamw.mean(axis=0).max()) * 100
    vmin = min(err_adam.mean(axis=0).min(), err_adamw.mean(axis=0).min()) * 100
    for ax, (label, errs, grid, unit) in zip(axes, [
        ("Adam + L2", err_adam, settings.l2_grid, "L2 factor λ"),
        ("AdamW (paper form)", err_adamw, settings.decay_grid, "decay per step λ (× schedule η_t)"),
    ]):
        mean = errs.mean(axis=0) * 100
        image = ax.imshow(mean, origin="lower", cmap="viridis_r", vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(settings.lrs)):
            for j in range(len(grid)):
                ax.text(j, i, f"{mean[i, j]:.1f}", ha="center", va="center", color="white" if mean[i, j] > (vmin + vmax) / 2 else "black", fontsize=8)
            best = int(np.argmin(mean[i]))
            ax.add_patch(Rectangle((best - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        ax.set(xticks=range(len(grid)), xticklabels=[f"{g:g}" for g in grid], yticks=range(len(settings.lrs)),
               yticklabels=[f"{lr:g}" for lr in settings.lrs], xlabel=f"{unit} (log grid)", ylabel="learning rate (log grid)",
               title=f"{label}: test error (%), mean of {len(seeds)} seed(s)")
        fig.colorbar(image, ax=ax, label="test error (%)")
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
            "network": f"64-{settings.hidden}-10 ReLU MLP, batch 50, {settings.epochs} epochs, cosine annealing of the lr to 0",
            "grid": {"learning rates": settings.lrs, "Adam L2 factors": settings.l2_grid, "AdamW decays (decoupled_lr=True)": settings.decay_grid},
            "seeds": seeds,
        },
        claims=claims,
        figures=[
            Figure("weight-decay-quadratic", fig2, "Fixed points on the diagonal quadratic."),
            Figure("weight-decay-heatmap", fig, "Final test error over the (learning rate, decay) grid; red: best decay per learning rate."),
        ],
        seeds=seeds,
        extra={"adam_l2_errors": err_adam.mean(axis=0).tolist(), "adamw_errors": err_adamw.mean(axis=0).tolist()},
    )
