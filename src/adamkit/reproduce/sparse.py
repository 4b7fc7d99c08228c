"""Experiment 8f: sparse bag-of-words features (Kingma & Ba, Sec. 6.1, Fig. 1 right; IMDB → generated corpus).

A generated bag-of-words classification stands in for IMDB: a vocabulary with Zipf
frequencies, each document a handful of tokens, labels from a logistic model with
weights θ* ~ N(0, 1). As in the paper: logistic regression with 50 % dropout on the
input features, α_t = α/√t, every optimizer's α tuned on a bracketed log grid, scored
by the training cost (cross-entropy on the whole set, no dropout, + λ/2 ‖w‖²).
The paper: Adagrad and Adam about equal, both well ahead of SGD-Nesterov.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
import torch
from torch import nn

from . import stats
from .common import (
    ExperimentResult, Figure, inverse_sqrt_schedule, make_optimizer, seed_everything, TRAINING_COST,
    training_cost, training_cost_claim, training_cost_figure,
)
from .runner import Runner
from .tuning import tuned_comparison

NAME = "sparse"
TITLE = "Sparse bag-of-words features with input dropout"
START = {"Adam": 3e-1, "Adagrad": 1.0, "SGD-Nesterov": 3.0}
TOLERANCE = 0.10  # "about equal": paired relative difference within ±10 %
L2 = 1e-4
PAPER_REF = "Kingma & Ba (2015), Sec. 6.1, Fig. 1 (right)"
PAPER_STATEMENT = ("IMDB bag-of-words (10,000 sparse features, 50 % input dropout), logistic regression: Adagrad and Adam "
                   "about equal, both well ahead of SGD-Nesterov")


@dataclass
class Settings:
    vocabulary: int
    documents: int
    tokens: int
    epochs: int
    tuning_seeds: int = 2
    batch_size: int = 128
    dropout: float = 0.5

    @classmethod
    def quick(cls) -> "Settings":
        return cls(vocabulary=500, documents=2000, tokens=15, epochs=4, tuning_seeds=1)

    @classmethod
    def full(cls) -> "Settings":
        return cls(vocabulary=2000, documents=10000, tokens=20, epochs=12)


def estimated_runs(settings: Settings, n_seeds: int) -> int:
    return len(START) * (6 * settings.tuning_seeds + max(0, n_seeds - settings.tuning_seeds))


@lru_cache(maxsize=4)
def make_corpus(vocabulary: int, documents: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary bag-of-words features (documents × vocabulary) with Zipf token frequencies, and labels."""
    rng = np.random.default_rng(seed)
    frequency = 1.0 / np.arange(1, vocabulary + 1)
    frequency /= frequency.sum()
    x = np.zeros((documents, vocabulary), dtype=np.float32)
    for i in range(documents):
        x[i, rng.choice(vocabulary, size=tokens, p=frequency)] = 1.0
    theta = rng.normal(size=vocabulary).astype(np.float32)
    labels = (rng.random(documents) < 1.0 / (1.0 + np.exp(-(x @ theta)))).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(labels)


def trial(name: str, lr: float, seed: int, vocabulary: int, documents: int, tokens: int, epochs: int, batch_size: int,
          dropout: float) -> dict:
    """Logistic regression with input dropout; training cost (no dropout) after every epoch."""
    x, y = make_corpus(vocabulary, documents, tokens, seed)
    generator = seed_everything(seed)
    weights = nn.Parameter(torch.zeros(vocabulary))
    bias = nn.Parameter(torch.zeros(()))
    optimizer = make_optimizer(name, [weights, bias], lr)
    schedule = inverse_sqrt_schedule(optimizer)

    def cost(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(xb @ weights + bias, yb) + 0.5 * L2 * weights.pow(2).sum()

    losses = []
    with torch.no_grad():
        losses.append(float(cost(x, y)))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            keep = (torch.rand(len(index), vocabulary, generator=generator) >= dropout).float() / (1 - dropout)
            optimizer.zero_grad()
            cost(x[index] * keep, y[index]).backward()
            optimizer.step()
            schedule.step()
        with torch.no_grad():
            losses.append(float(cost(x, y)))
        if not np.isfinite(losses[-1]):
            break
    return {"ticks": list(range(len(losses))), "losses": losses}


def rule(scores: dict[str, list[float]]) -> tuple[list[stats.Interval], bool | None]:
    """(Adam − Adagrad)/Adagrad within ±10 %; (SGDN − Adam)/Adam > 0 and (SGDN − Adagrad)/Adagrad > 0."""
    return stats.alike_and_both_below(scores, "Adam", "Adagrad", "SGD-Nesterov", TOLERANCE)


def run(settings: Settings, seeds: list[int], runner: Runner) -> ExperimentResult:
    comparison = tuned_comparison(runner, trial, partial(_kwargs, settings=settings), training_cost, START, seeds, settings.tuning_seeds,
                                  score_name=TRAINING_COST)
    claims = [training_cost_claim(
        comparison,
        list(START),
        rule(comparison.scores),
        setting="α",
        key="sparse-training-cost",
        statement="Sparse bag-of-words with input dropout: Adam ≈ Adagrad (±10 %), both below SGD-Nesterov in training cost",
        paper_ref=PAPER_REF,
        paper_statement=PAPER_STATEMENT,
        rule=stats.alike_and_both_below_text("Adam", "Adagrad", "SGD-Nesterov", TOLERANCE),
    )]
    fig = training_cost_figure(
        comparison,
        list(START),
        setting="α",
        xlabel="epoch",
        ylabel="training cost: cross-entropy + λ/2‖w‖² (nats, log)",
        title="Bag-of-words logistic regression, 50 % input dropout, α/√t",
    )
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source=PAPER_REF,
        setup={
            "data": f"generated: vocabulary {settings.vocabulary} with Zipf frequencies ∝ 1/rank, {settings.documents} documents of "
                    f"{settings.tokens} tokens (binary features), labels ~ Bernoulli(sigmoid(x·θ*)), θ* ~ N(0, I); one corpus per seed",
            "model": f"logistic regression with bias, λ = {L2:g}, {settings.dropout:.0%} dropout on the input features, minibatch {settings.batch_size}, "
                     f"{settings.epochs} epochs, α_t = α/√t",
            "tuning": f"α on a 2× log grid, extended until bracketed, equal trials, first {settings.tuning_seeds} seed(s)",
            "optimizers": "adamkit.Adam; torch.optim.Adagrad; torch.optim.SGD(momentum=0.9, nesterov=True)",
            "score": "training cost (no dropout) averaged over the last 10 % of epochs",
            "seeds": seeds,
        },
        deviations=[
            f"IMDB → a generated Zipf bag-of-words corpus ({settings.vocabulary} features; the paper: 10,000 features of real reviews)",
            f"{settings.documents} documents, {settings.epochs} epochs",
            "λ chosen by us (the paper does not state it)",
        ],
        claims=claims,
        figures=[Figure("sparse", fig, "Training cost at each tuned α, and the tuning curves.")],
        seeds=seeds,
        extra={"chosen_lr": {n: c.chosen for n, c in comparison.curves.items()}},
    )


def _kwargs(name: str, lr: float, seed: int, *, settings: Settings) -> dict:
    return {"name": name, "lr": lr, "seed": seed, "vocabulary": settings.vocabulary, "documents": settings.documents,
            "tokens": settings.tokens, "epochs": settings.epochs, "batch_size": settings.batch_size, "dropout": settings.dropout}
