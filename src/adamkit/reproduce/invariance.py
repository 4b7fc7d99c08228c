"""Experiment 8a: Adam is invariant to rescaling the gradient (Kingma & Ba, Sec. 2.1).

m̂/√v̂ is unchanged when every gradient is multiplied by c > 0; only ε breaks the
invariance, by an amount of order ε/√v̂. Softmax regression on the bundled digits is
trained full-batch in float64 (deterministic) with its loss scaled by 1, 1e-3 and
1e3, with ε = 1e-8 and ε = 0; SGD with the same scalings shows what a method
without the invariance does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import data
from .common import Bar, Claim, ExperimentResult, Figure, Measure, make_optimizer, new_figure, seed_everything, verdict

NAME = "invariance"
TITLE = "Invariance to gradient rescaling"
SCALES = (1e-3, 1e3)


@dataclass
class Settings:
    steps: int

    @classmethod
    def quick(cls) -> "Settings":
        return cls(steps=150)

    @classmethod
    def full(cls) -> "Settings":
        return cls(steps=1000)


def total_work(settings: Settings, n_seeds: int) -> int:
    return 2 * (1 + len(SCALES)) * settings.steps + (1 + len(SCALES)) * settings.steps


def trajectory(settings: Settings, seed: int, optimizer_name: str, scale: float, bar: Bar | None = None, **kwargs) -> np.ndarray:
    """Flattened parameters after every step, shape (steps + 1, n_params)."""
    split = data.digits(seed=seed)
    # Pixels that are 0 in every training image have gradient exactly 0, and 0/0 with ε = 0.
    x = split.x_train.double()[:, split.x_train.std(dim=0) > 0]
    y = split.y_train
    seed_everything(seed)
    model = nn.Linear(x.shape[1], 10).double()  # softmax regression: no dead units, no exact zeros
    optimizer = make_optimizer(optimizer_name, model.parameters(), **kwargs)
    history = [nn.utils.parameters_to_vector(model.parameters()).detach().clone()]
    for _ in range(settings.steps):
        optimizer.zero_grad()
        (scale * nn.functional.cross_entropy(model(x), y)).backward()
        optimizer.step()
        history.append(nn.utils.parameters_to_vector(model.parameters()).detach().clone())
        if bar is not None:
            bar.update(1)
    return torch.stack(history).numpy()


def deviation(run: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per step: max |θ − θ_ref| relative to how far the reference has moved (max |θ_ref − θ_0|)."""
    travelled = np.maximum(np.abs(reference - reference[0]).max(axis=1), 1e-300)
    return np.abs(run - reference).max(axis=1) / travelled


def rule_invariance(eps0_deviations: list[float]) -> bool:
    """With ε = 0 every rescaled trajectory stays within 1e-9 (relative) of the unscaled one."""
    return max(eps0_deviations) <= 1e-9


def run(settings: Settings, seeds: list[int], bar: Bar | None = None) -> ExperimentResult:
    seed = seeds[0]
    curves: dict[str, np.ndarray] = {}
    final: dict[str, float] = {}
    for eps in (1e-8, 0.0):
        reference = trajectory(settings, seed, "Adam", 1.0, bar, lr=1e-3, eps=eps)
        for scale in SCALES:
            dev = deviation(trajectory(settings, seed, "Adam", scale, bar, lr=1e-3, eps=eps), reference)
            curves[f"Adam ε={eps:g}, gradient × {scale:g}"] = dev
            final[f"Adam ε={eps:g} ×{scale:g}"] = float(dev[1:].max())
    sgd_reference = trajectory(settings, seed, "SGD", 1.0, bar, lr=0.1)
    for scale in SCALES:
        with np.errstate(all="ignore"):
            dev = deviation(trajectory(settings, seed, "SGD", scale, bar, lr=0.1), sgd_reference)
        curves[f"SGD, gradient × {scale:g}"] = dev
        final[f"SGD ×{scale:g}"] = float(dev[1:].max())
    eps0 = [final[f"Adam ε=0 ×{scale:g}"] for scale in SCALES]
    claims = [
        Claim(
            key="invariance-rescaling",
            statement="Adam's trajectory is invariant to rescaling the gradient (up to ε effects)",
            measured={f"max relative deviation, {name}": Measure([value]) for name, value in final.items()},
            paper="the effective step is invariant to the scale of the gradients (Kingma & Ba, Sec. 2.1)",
            rule="with ε = 0 the trajectories under gradient × 1e-3 and × 1e3 deviate ≤ 1e-9 (relative to distance travelled) from the unscaled one",
            verdict=verdict(rule_invariance(eps0)),
        )
    ]
    fig, ax = new_figure(width=7.5)
    steps = np.arange(settings.steps + 1)
    for label, dev in curves.items():
        shown = np.where(np.isfinite(dev) & (dev > 0), dev, np.nan)
        ax.plot(steps[1:], np.clip(shown[1:], 1e-18, 1e6), label=label, linestyle="--" if label.startswith("SGD") else "-")
    ax.set(xscale="log", yscale="log", xlabel="full-batch step (log scale)", ylabel="max |θ − θ_unscaled| / max |θ_unscaled − θ_0|  (log scale)",
           title="Trajectory deviation under gradient rescaling (float64)")
    ax.legend(fontsize=8)
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source="Kingma & Ba (2015), Sec. 2.1",
        setup={
            "data": "scikit-learn digits, 1300 training images, full batch",
            "model": "softmax regression on the non-constant pixels, float64, same initialisation for every run",
            "optimizers": "adamkit.Adam lr 1e-3 with ε = 1e-8 and ε = 0; torch.optim.SGD lr 0.1 for contrast",
            "rescaling": f"loss (hence gradient) multiplied by {SCALES}",
            "steps": settings.steps,
            "seed": seed,
        },
        claims=claims,
        figures=[Figure("invariance", fig, "Deviation from the unscaled trajectory; SGD (dashed) is not scale invariant.")],
        seeds=[seed],
    )
