"""Experiment 4: bias correction (Kingma & Ba, Sec. 3 and 6.4, Fig. 4).

A variational auto-encoder on binarised MNIST trained with β1 ∈ {0, 0.9},
β2 = 0.9999 and log10 α on a half-decade grid from −5 to −1 (extended if an optimum
sits at an edge), with and without the 1/(1 − β^t) corrections
(``adamkit.Adam(bias_correction=False)``). Without correction v_t starts near
(1 − β2)·g², so the first steps are up to (1 − β1)/√(1 − β2) times α: 100α for
β1 = 0, β2 = 0.9999. The paper's qualitative rule, judged at two budgets: the best
loss with correction is below the best without, and the largest stable α is
smaller without correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import data, stats
from .common import Claim, ExperimentResult, Figure, Measure, make_optimizer, new_figure, plot_tuning, seed_everything
from .runner import Runner
from .tuning import evaluate_chosen, tune, tuning_seeds as held_out_seeds

NAME = "bias-correction"
TITLE = "Bias correction: a VAE on binarised MNIST"
BETA1S = (0.0, 0.9)
BETA2 = 0.9999
CANDIDATES = {f"{'with' if c else 'without'} correction, β1 = {b1:g}": (b1, c) for c in (True, False) for b1 in BETA1S}
PAPER_REF = "Kingma & Ba (2015), Sec. 6.4, Fig. 4"
PAPER_STATEMENT = ("\"values β2 close to 1 indeed lead to instabilities in training when no bias correction term was present, especially at "
                   "first few epochs of the training. The best results were achieved with small values of (1−β2) and bias correction\" "
                   "(VAE; β1 ∈ {0, 0.9}, β2 ∈ {0.99, 0.999, 0.9999}, log10 α from −5 to −1; losses after 10 and 100 epochs of MNIST, "
                   "where our budgets are a few hundred to a few thousand steps on 5,000 digits, β2 = 0.9999 only)")


@dataclass
class Settings:
    budgets: tuple[int, int]  # steps
    hidden: int
    latent: int
    n_train: int
    eval_every: int
    tuning_seeds: int = 2
    batch_size: int = 100

    @classmethod
    def quick(cls) -> "Settings":
        return cls(budgets=(60, 150), hidden=30, latent=5, n_train=300, eval_every=15, tuning_seeds=1)

    @classmethod
    def full(cls) -> "Settings":
        return cls(budgets=(500, 2000), hidden=100, latent=10, n_train=5000, eval_every=50)


def estimated_runs(settings: Settings, n_seeds: int) -> int:
    return len(CANDIDATES) * (9 * settings.tuning_seeds + n_seeds)


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


def trial(beta1: float, corrected: bool, lr: float, seed: int, steps: int, eval_every: int, hidden: int, latent: int,
          n_train: int, batch_size: int) -> dict:
    """−ELBO on 1,000 training images (fixed noise) every ``eval_every`` steps; inf once training blew up."""
    x = data.binarised_mnist(n_train)
    probe = x[:1000]
    generator = seed_everything(seed)
    model = VAE(hidden, latent)
    optimizer = make_optimizer("Adam", model.parameters(), lr, betas=(beta1, BETA2), bias_correction=corrected)

    def evaluate() -> float:
        with torch.no_grad():
            value = float(model.loss(probe, torch.Generator().manual_seed(12345)))
        return value if math.isfinite(value) else math.inf

    losses = [evaluate()]
    step = 0
    while step < steps:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            optimizer.zero_grad()
            loss = model.loss(x[order[start : start + batch_size]], generator)
            if not torch.isfinite(loss):
                losses += [math.inf] * (steps // eval_every + 1 - len(losses))
                return {"losses": losses, "eval_every": eval_every}
            loss.backward()
            optimizer.step()
            step += 1
            if step % eval_every == 0:
                losses.append(evaluate())
            if step >= steps:
                break
    return {"losses": losses, "eval_every": eval_every}


def loss_at(result: dict, budget: int) -> float:
    """Mean of the last 10 % of the evaluations made within ``budget`` steps."""
    return stats.tail_mean(result["losses"][: budget // result["eval_every"] + 1])


def largest_stable(curve_values: list[float], results: dict, name: str, seeds: list[int], budget: int, initial: float) -> float:
    """The largest α whose run stays finite and ends below the loss before training, in every tuning seed (0 if none)."""
    stable = [v for v in curve_values if all(loss_at(results[(name, v, s)], budget) < initial for s in seeds)]
    return max(stable) if stable else 0.0


def run(settings: Settings, seeds: list[int], runner: Runner) -> ExperimentResult:
    make = lambda name, lr, seed: {"beta1": CANDIDATES[name][0], "corrected": CANDIDATES[name][1], "lr": lr, "seed": seed,  # noqa: E731
                                   "steps": max(settings.budgets), "eval_every": settings.eval_every, "hidden": settings.hidden,
                                   "latent": settings.latent, "n_train": settings.n_train, "batch_size": settings.batch_size}
    start = {name: 1e-3 for name in CANDIDATES}
    tuning_seeds = held_out_seeds(seeds, settings.tuning_seeds)  # never evaluated
    cache: dict = {}
    claims, figures = [], []
    fig, axes = new_figure(width=5.2, height=4.2, ncols=len(settings.budgets))
    for ax, budget in zip(axes, settings.budgets):
        curves, results = tune(runner, trial, make, lambda r: loss_at(r, budget), start, tuning_seeds, factor=math.sqrt(10), width=4,
                               cache=cache, score_name=f"−ELBO (nats), mean of the last 10 % of evaluations within {budget} steps")
        runs = evaluate_chosen(runner, trial, make, curves, results, seeds)
        initial = float(np.mean([r["losses"][0] for rs in runs.values() for r in rs]))
        best = {c: min((n for n in CANDIDATES if CANDIDATES[n][1] == c), key=lambda n: curves[n].scores[curves[n].values.index(curves[n].chosen)])
                for c in (True, False)}
        per_seed = {c: [loss_at(r, budget) for r in runs[best[c]]] for c in (True, False)}
        interval = stats.bootstrap_interval(stats.relative_differences(per_seed[False], per_seed[True]),
                                            "(best without − best with correction) / best with, paired per seed")
        stable = {n: largest_stable(curves[n].values, results, n, tuning_seeds, budget, initial) for n in CANDIDATES}
        smaller_without = all(stable[f"without correction, β1 = {b1:g}"] < stable[f"with correction, β1 = {b1:g}"] for b1 in BETA1S)
        claims.append(Claim(
            key="bias-correction" if budget == max(settings.budgets) else "bias-correction-short",
            statement=f"β2 = 0.9999: bias correction gives the best loss, and without it the largest stable α is smaller (after {budget:,} steps)",
            paper_ref=PAPER_REF,
            paper_statement=PAPER_STATEMENT,
            steps=budget,
            measured={f"{n} (α = {curves[n].chosen:.3g})": Measure([loss_at(r, budget) for r in runs[n]], "nats") for n in CANDIDATES}
            | {f"largest stable α, {n}": Measure([stable[n]]) for n in CANDIDATES}
            | {"loss before training": Measure([initial], "nats")},
            rule="95 % bootstrap interval of the paired per-seed (best without − best with)/best with above 0 (best = the tuned (β1, α) of each), "
                 "and for both β1 the largest α that stays below the initial loss in every tuning seed is smaller without correction",
            intervals=[interval],
            holds=stats.combine(stats.above(interval, 0.0), smaller_without),
            tuning=list(curves.values()),
            budget=f"{budget:,} steps ({budget * settings.batch_size / settings.n_train:.0f} epochs of our {settings.n_train} digits)",
        ))
        plot_tuning(ax, list(curves.values()), "−ELBO per image (nats, log)", f"β2 = {BETA2}, after {budget:,} steps")
        ax.axhline(initial, color="grey", linestyle=":", label="loss before training")
    figures.append(Figure("bias-correction", fig, "Loss over the α grid with and without bias correction, at both budgets (star: chosen α)."))
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source=PAPER_REF,
        setup={
            "data": f"MNIST, {settings.n_train} real digits binarised at 0.5; loss measured on 1,000 of them with fixed noise",
            "model": f"VAE 784-{settings.hidden}-{settings.latent} (tanh), Gaussian latent, Bernoulli decoder",
            "training": f"minibatch {settings.batch_size}; budgets {list(settings.budgets)} steps; evaluated every {settings.eval_every} steps",
            "grid": f"β1 ∈ {list(BETA1S)}, β2 = {BETA2}, α on a half-decade grid from 1e-5 to 1e-1 (extended if the optimum is at an edge), "
                    "with and without bias correction",
            "optimizer": "adamkit.Adam(betas=(β1, β2), bias_correction=True/False), eps 1e-8",
            "stable": "the run stays finite and its loss ends below the loss before training",
            "seeds": seeds,
        },
        deviations=[
            f"only β2 = {BETA2} (the rule's case; the paper also shows 0.99 and 0.999)",
            f"budgets of {settings.budgets[0]:,} and {settings.budgets[1]:,} steps (the paper: 10 and 100 epochs of 50,000+ images, "
            "5,000 and 50,000 steps at minibatch 100)",
            f"VAE with {settings.hidden} hidden units and {settings.latent} latents (the paper: 500 hidden, 50 latents)",
        ],
        claims=claims,
        figures=figures,
        seeds=seeds,
    )
