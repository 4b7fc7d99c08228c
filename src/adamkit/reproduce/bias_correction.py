"""Experiment 4: bias correction (Kingma & Ba, Sec. 3 and 6.4, Fig. 4).

A variational auto-encoder on binarised MNIST trained with the paper's grid, β1 ∈ {0, 0.9},
β2 ∈ {0.99, 0.999, 0.9999} and log10 α on a half-decade grid from −5 to −1 (extended if an
optimum sits at an edge), with and without the 1/(1 − β^t) corrections
(``adamkit.Adam(bias_correction=False)``). Without correction v_t starts near (1 − β2)·g², so
the first steps are up to (1 − β1)/√(1 − β2) times α: 10α at β2 = 0.99, 100α at 0.9999 (β1 = 0).
The paper's qualitative rule, judged at two budgets: the best loss over the whole grid is reached
with correction and with small 1 − β2 (β2 ≥ 0.999), and for β2 close to 1 (0.999, 0.9999) the
largest stable α is smaller without correction.
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
from .tuning import evaluate_values, tune, tuning_seeds as held_out_seeds

NAME = "bias-correction"
TITLE = "Bias correction: a VAE on binarised MNIST"
BETA1S = (0.0, 0.9)
BETA2S = (0.99, 0.999, 0.9999)  # Sec. 6.4's grid
CLOSE_TO_ONE = (0.999, 0.9999)  # "β2 close to 1", "small values of (1 − β2)"
PAPER_STEPS = (10 * 500, 100 * 500)  # Fig. 4: after 10 and 100 epochs of 50,000 images in minibatches of 100
PAPER_REF = "Kingma & Ba (2015), Sec. 6.4, Fig. 4"
PAPER_STATEMENT = ("\"values β2 close to 1 indeed lead to instabilities in training when no bias correction term was present, especially at "
                   "first few epochs of the training. The best results were achieved with small values of (1−β2) and bias correction\" "
                   "(Sec. 6.4, Fig. 4: VAE; β1 ∈ {0, 0.9}, β2 ∈ {0.99, 0.999, 0.9999}, log10 α from −5 to −1; losses after 10 and 100 "
                   "epochs)")


@dataclass
class Settings:
    budgets: tuple[int, int]  # steps
    hidden: int
    latent: int
    n_train: int
    eval_every: int
    tuning_seeds: int = 2
    batch_size: int = 100
    beta2s: tuple[float, ...] = BETA2S

    @classmethod
    def quick(cls) -> "Settings":
        return cls(budgets=(60, 150), hidden=30, latent=5, n_train=300, eval_every=15, tuning_seeds=1, beta2s=(0.99, 0.9999))

    @classmethod
    def full(cls) -> "Settings":
        return cls(budgets=(500, 2000), hidden=100, latent=10, n_train=5000, eval_every=50)


def candidate_name(beta1: float, beta2: float, corrected: bool) -> str:
    return f"{'with' if corrected else 'without'} correction, β1 = {beta1:g}, β2 = {beta2:g}"


def candidates(beta2s: tuple[float, ...]) -> dict[str, tuple[float, float, bool]]:
    """name -> (β1, β2, corrected) for the grid's every combination."""
    return {candidate_name(b1, b2, c): (b1, b2, c) for b2 in beta2s for c in (True, False) for b1 in BETA1S}


def estimated_runs(settings: Settings, n_seeds: int) -> int:
    return len(candidates(settings.beta2s)) * 9 * settings.tuning_seeds + 2 * (len(settings.beta2s) + 1) * n_seeds


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
          n_train: int, batch_size: int, beta2: float) -> dict:
    """−ELBO on 1,000 training images (fixed noise) every ``eval_every`` steps; inf once training blew up."""
    x = data.binarised_mnist(n_train)
    probe = x[:1000]
    generator = seed_everything(seed)
    model = VAE(hidden, latent)
    optimizer = make_optimizer("Adam", model.parameters(), lr, betas=(beta1, beta2), bias_correction=corrected)

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


def losses_within(result: dict, budget: int) -> list[float]:
    """The evaluations made within ``budget`` steps."""
    return result["losses"][: budget // result["eval_every"] + 1]


def loss_at(result: dict, budget: int) -> float:
    """Mean of the last 10 % of the evaluations made within ``budget`` steps."""
    return stats.tail_mean(losses_within(result, budget))


def largest_stable(curve_values: list[float], results: dict, name: str, seeds: list[int], budget: int, initial: float) -> float:
    """The largest α whose run stays finite and ends below the loss before training, in every tuning seed (0 if none)."""
    stable = [v for v in curve_values if all(loss_at(results[(name, v, s)], budget) < initial for s in seeds)]
    return max(stable) if stable else 0.0


def explain(parts: dict[str, bool | None]) -> str:
    """The reason for the rule's outcome (:func:`.stats.combine` of ``parts``): the parts that fail, else those undecided."""
    failed = [text for text, ok in parts.items() if ok is False]
    undecided = [text for text, ok in parts.items() if ok is None]
    text = ("fails: " + "; ".join(failed) if failed else "undecided: " + "; ".join(undecided) if undecided
            else f"all {len(parts)} parts hold: " + "; ".join(parts))
    return text + " (the per-β2 intervals are shown, not judged)"


def run(settings: Settings, seeds: list[int], runner: Runner) -> ExperimentResult:
    grid = candidates(settings.beta2s)
    make = lambda name, lr, seed: {"beta1": grid[name][0], "beta2": grid[name][1], "corrected": grid[name][2], "lr": lr,  # noqa: E731
                                   "seed": seed, "steps": max(settings.budgets), "eval_every": settings.eval_every, "hidden": settings.hidden,
                                   "latent": settings.latent, "n_train": settings.n_train, "batch_size": settings.batch_size}
    start = {name: 1e-3 for name in grid}
    tuning_seeds = held_out_seeds(seeds, settings.tuning_seeds)  # never evaluated
    close = [b2 for b2 in settings.beta2s if b2 in CLOSE_TO_ONE]
    cache: dict = {}
    claims, figures = [], []
    fig, axes = new_figure(width=5.2, height=4.2, ncols=len(settings.budgets))
    for ax, budget, paper_steps in zip(axes, settings.budgets, PAPER_STEPS):
        curves, results = tune(runner, trial, make, lambda r: loss_at(r, budget), start, tuning_seeds, factor=math.sqrt(10), width=4,
                               cache=cache, score_name=f"−ELBO (nats), mean of the last 10 % of evaluations within {budget} steps")

        def best(names: list[str]) -> str:  # the lowest tuning score at its chosen α
            return min(names, key=lambda n: curves[n].scores[curves[n].values.index(curves[n].chosen)])

        overall = {c: best([n for n in grid if grid[n][2] == c]) for c in (True, False)}
        per_beta2 = {b2: {c: best([n for n in grid if grid[n][1] == b2 and grid[n][2] == c]) for c in (True, False)} for b2 in settings.beta2s}
        needed = list(dict.fromkeys([*overall.values(), *(n for pair in per_beta2.values() for n in pair.values())]))
        runs = evaluate_values(runner, trial, make, {n: curves[n].chosen for n in needed}, results, seeds)  # only what the rule reads
        initial = float(np.mean([r["losses"][0] for rs in runs.values() for r in rs]))
        loss = {n: [loss_at(r, budget) for r in runs[n]] for n in needed}
        main = stats.bootstrap_interval(stats.relative_differences(loss[overall[False]], loss[overall[True]]),
                                        "(best without − best with correction)/best with over the whole (β1, β2, α) grid, paired per seed")
        shown = [stats.bootstrap_interval(stats.relative_differences(loss[per_beta2[b2][False]], loss[per_beta2[b2][True]]),
                                          f"β2 = {b2:g}: (best without − best with)/best with (shown, not judged)") for b2 in settings.beta2s]
        # the horizon gate on every configuration the rule reads (mean −ELBO curve over the seeds, within the budget)
        gate = stats.horizon_gate({n: np.mean([losses_within(r, budget) for r in runs[n]], axis=0).tolist() for n in needed},
                                  budget, paper_steps)
        small = grid[overall[True]][1] in CLOSE_TO_ONE
        stable = {n: largest_stable(curves[n].values, results, n, tuning_seeds, budget, initial) for n in grid}
        smaller_without = all(stable[candidate_name(b1, b2, False)] < stable[candidate_name(b1, b2, True)] for b1 in BETA1S for b2 in close)
        parts = {"the whole-grid interval above 0": stats.above(main, 0.0),
                 f"the best with correction at a β2 close to 1 (it is at β2 = {grid[overall[True]][1]:g})": small,
                 f"the largest stable α smaller without correction at β2 ∈ {close}": smaller_without}
        claims.append(Claim(
            explanation=explain(parts),
            key="bias-correction" if budget == max(settings.budgets) else "bias-correction-short",
            statement=f"The best loss over the grid comes with bias correction and β2 close to 1; without correction the largest stable α "
                      f"is smaller for β2 close to 1 (after {budget:,} steps)",
            paper_ref=PAPER_REF,
            paper_statement=PAPER_STATEMENT,
            steps=budget,
            paper_steps=paper_steps,
            horizon=gate,
            gate=gate,
            measured={f"{n} (α = {curves[n].chosen:.3g})": Measure(loss[n], "nats") for n in needed}
            | {f"largest stable α, {n}": Measure([stable[n]]) for n in grid}
            | {"best with correction at β2": Measure([grid[overall[True]][1]]), "loss before training": Measure([initial], "nats")},
            rule="95 % bootstrap interval of the paired per-seed (best without − best with)/best with above 0 (best = the tuned (β1, β2, α) "
                 f"of each, chosen on the tuning seeds); the best with correction at β2 ∈ {list(CLOSE_TO_ONE)} (small 1 − β2); and for "
                 f"β2 ∈ {close} and both β1 the largest α that stays below the initial loss in every tuning seed is smaller without "
                 "correction. The per-β2 intervals are shown, not judged",
            intervals=[main, *shown],
            holds=stats.combine(*parts.values()),
            tuning=list(curves.values()),
            budget=f"{budget:,} steps ({budget * settings.batch_size / settings.n_train:.0f} epochs of our {settings.n_train} digits)",
        ))
        plot_tuning(ax, list(curves.values()), "−ELBO per image (nats, log)", f"β2 ∈ {list(settings.beta2s)}, after {budget:,} steps")
        ax.axhline(initial, color="grey", linestyle=":", label="loss before training")
    figures.append(Figure("bias-correction", fig, "Loss over the α grid with and without bias correction for every (β1, β2), at both budgets "
                          "(star: chosen α)."))
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source=PAPER_REF,
        setup={
            "data": f"MNIST, {settings.n_train} real digits binarised at 0.5; loss measured on 1,000 of them with fixed noise",
            "model": f"VAE 784-{settings.hidden}-{settings.latent} (tanh), Gaussian latent, Bernoulli decoder",
            "training": f"minibatch {settings.batch_size}; budgets {list(settings.budgets)} steps; evaluated every {settings.eval_every} steps",
            "grid": f"β1 ∈ {list(BETA1S)}, β2 ∈ {list(settings.beta2s)}, α on a half-decade grid from 1e-5 to 1e-1 (extended if the optimum is at an edge), "
                    "with and without bias correction",
            "optimizer": "adamkit.Adam(betas=(β1, β2), bias_correction=True/False), eps 1e-8",
            "stable": "the run stays finite and its loss ends below the loss before training",
            "seeds": seeds,
        },
        deviations=[
            f"budgets of {settings.budgets[0]:,} and {settings.budgets[1]:,} steps (the paper: 10 and 100 epochs of 50,000+ images, "
            "5,000 and 50,000 steps at minibatch 100)",
            f"VAE with {settings.hidden} hidden units and {settings.latent} latents (the paper: 500 hidden, 50 latents)",
        ],
        claims=claims,
        figures=figures,
        seeds=seeds,
    )
