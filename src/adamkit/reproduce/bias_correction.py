"""Experiment 4: bias correction (Kingma & Ba, Sec. 3 and 6.4, Fig. 4).

A variational auto-encoder on binarised MNIST trained with β1 ∈ {0, 0.9},
β2 ∈ {0.99, 0.999, 0.9999} and a grid of step sizes, with and without the
1/(1 − β^t) corrections (``adamkit.Adam(bias_correction=False)``). Without
correction v_t starts near (1 − β2)·g², so the first steps are up to
(1 − β1)/√(1 − β2) times α: 100α for β1 = 0, β2 = 0.9999. The paper: without
correction, β2 close to 1 with large α is unstable; with it, training works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch
from torch import nn

from . import data
from .common import Bar, Claim, ExperimentResult, Figure, Measure, make_optimizer, new_figure, seed_everything, verdict

NAME = "bias-correction"
TITLE = "Bias correction: a VAE on binarised MNIST"
BETA1S = (0.0, 0.9)
BETA2S = (0.99, 0.999, 0.9999)


@dataclass
class Settings:
    lrs: list[float]
    hidden: int
    latent: int
    n_train: int
    epochs: int
    batch_size: int = 100

    @classmethod
    def quick(cls) -> "Settings":
        return cls(lrs=[1e-3, 1e-2], hidden=100, latent=10, n_train=1000, epochs=4)

    @classmethod
    def full(cls) -> "Settings":
        return cls(lrs=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2], hidden=200, latent=20, n_train=3000, epochs=5)


def total_work(settings: Settings, n_seeds: int) -> int:
    return len(BETA1S) * len(BETA2S) * len(settings.lrs) * 2 * n_seeds * settings.epochs


class VAE(nn.Module):
    """One hidden layer (tanh) encoder and decoder, Gaussian latent, Bernoulli pixels."""

    def __init__(self, hidden: int, latent: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, 784))

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO per example (nats): reconstruction cross-entropy + KL(q(z|x) || N(0, I))."""
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        noise = torch.randn(mean.shape, generator=generator)
        z = mean + noise * torch.exp(0.5 * log_var)
        reconstruction = nn.functional.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = -0.5 * torch.sum(1 + log_var - mean**2 - log_var.exp())
        return (reconstruction + kl) / len(x)


def train_vae(x: torch.Tensor, settings: Settings, lr: float, beta1: float, beta2: float, bias_correction: bool,
              seed: int, bar: Bar | None = None) -> tuple[float, float]:
    """(loss before training, final loss over the training set); inf when training blew up."""
    generator = seed_everything(seed)
    model = VAE(settings.hidden, settings.latent)
    optimizer = make_optimizer("Adam", model.parameters(), lr, betas=(beta1, beta2), bias_correction=bias_correction)
    with torch.no_grad():
        initial = float(model.loss(x, generator))
    for epoch in range(settings.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), settings.batch_size):
            optimizer.zero_grad()
            loss = model.loss(x[order[start : start + settings.batch_size]], generator)
            if not torch.isfinite(loss):
                if bar is not None:
                    bar.update(settings.epochs - epoch)
                return initial, math.inf
            loss.backward()
            optimizer.step()
        if bar is not None:
            bar.update(1)
    with torch.no_grad():
        final = float(model.loss(x, generator))
    return initial, final if math.isfinite(final) else math.inf


def rule_bias_correction(cells: dict[tuple[float, float, bool], float], initial: float, lrs: list[float]) -> bool:
    """For β2 = 0.9999, both β1 and every α ≥ 1e-3: with correction the loss falls below its
    initial value, and without it the loss is non-finite or above 1.1 × the corrected loss."""
    checked = [(beta1, lr) for beta1 in BETA1S for lr in lrs if lr >= 1e-3]
    return bool(checked) and all(
        cells[(beta1, lr, True)] < initial and cells[(beta1, lr, False)] > 1.1 * cells[(beta1, lr, True)]
        for beta1, lr in checked
    )


def run(settings: Settings, seeds: list[int], bar: Bar | None = None) -> ExperimentResult:
    x = data.binarised_mnist(settings.n_train)
    results: dict[tuple[float, float, float, bool], list[float]] = {}
    initials = []
    for beta1, beta2, lr, corrected in product(BETA1S, BETA2S, settings.lrs, (True, False)):
        for seed in seeds:
            initial, final = train_vae(x, settings, lr, beta1, beta2, corrected, seed, bar)
            initials.append(initial)
            results.setdefault((beta1, beta2, lr, corrected), []).append(final)
    mean = {key: float(np.mean(values)) for key, values in results.items()}  # inf if any seed blew up
    initial = float(np.mean(initials))
    at_9999 = {(b1, lr, c): mean[(b1, 0.9999, lr, c)] for b1 in BETA1S for lr in settings.lrs for c in (True, False)}
    measured = {}
    for b1 in BETA1S:
        for lr in (lr for lr in settings.lrs if lr >= 1e-3):
            for corrected in (True, False):
                label = f"β1={b1:g}, β2=0.9999, α={lr:g}, {'with' if corrected else 'without'} correction"
                measured[label] = Measure(results[(b1, 0.9999, lr, corrected)], "nats")
    measured["loss before training"] = Measure([initial], "nats")
    claims = [
        Claim(
            key="bias-correction",
            statement="Without bias correction β2 = 0.9999 with α ≥ 1e-3 is unstable; with it training works",
            measured=measured,
            paper="without bias correction β2 = 0.9999 and α ≥ 1e-3 diverge; with it they train (ANCHORS.md; Kingma & Ba, Fig. 4)",
            rule="for β2 = 0.9999, β1 ∈ {0, 0.9}, α ≥ 1e-3: corrected loss < loss before training, uncorrected loss > 1.1 × corrected (or non-finite)",
            verdict=verdict(rule_bias_correction(at_9999, initial, settings.lrs)),
        )
    ]
    fig, axes = new_figure(width=4.6, height=3.8, ncols=len(BETA2S))
    finite_max = max(v for v in mean.values() if math.isfinite(v))
    for ax, beta2 in zip(axes, BETA2S):
        for k, beta1 in enumerate(BETA1S):
            for corrected, style in ((True, "-"), (False, "--")):
                values = [mean[(beta1, beta2, lr, corrected)] for lr in settings.lrs]
                shown = [v if math.isfinite(v) else np.nan for v in values]
                ax.plot(settings.lrs, shown, style, marker="o", color=f"C{k}",
                        label=f"β1={beta1:g}, {'with' if corrected else 'without'} correction")
                blown = [lr for lr, v in zip(settings.lrs, values) if not math.isfinite(v)]
                if blown:
                    ax.plot(blown, [finite_max * 1.5] * len(blown), "x", color=f"C{k}", markersize=9)
        ax.axhline(initial, color="grey", linestyle=":", label="loss before training")
        ax.set(xscale="log", yscale="log", xlabel="step size α (log scale)", ylabel="final loss: −ELBO per image (nats, log scale)",
               title=f"β2 = {beta2}  (x: non-finite)")
    axes[0].legend(fontsize=7)
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source="Kingma & Ba (2015), Sec. 3 and 6.4, Fig. 4",
        setup={
            "data": f"MNIST, {settings.n_train} real digits binarised at 0.5",
            "model": f"VAE 784-{settings.hidden}-{settings.latent} (tanh), Gaussian latent, Bernoulli decoder",
            "training": f"minibatch {settings.batch_size}, {settings.epochs} epochs; loss = −ELBO per image on the training set at the end",
            "grid": {"β1": list(BETA1S), "β2": list(BETA2S), "α": settings.lrs, "bias correction": [True, False]},
            "optimizer": "adamkit.Adam(betas=(β1, β2), bias_correction=True/False), eps 1e-8",
            "seeds": seeds,
        },
        claims=claims,
        figures=[Figure("bias-correction", fig, "Final VAE loss over the grid, with (solid) and without (dashed) bias correction.")],
        seeds=seeds,
    )
