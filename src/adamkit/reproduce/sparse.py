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

from . import batched, margins
from .common import (
    EXCESS, PAPER, ExperimentResult, Figure, comparative_claim, excess_gaps, inverse_sqrt, inverse_sqrt_schedule, make_optimizer, seed_everything,
    TRAINING_COST, training_cost, training_cost_figure,
)
from .runner import Runner
from .tuning import tuned_comparison

NAME = "sparse"
TITLE = "Sparse bag-of-words features with input dropout"
START = {"Adam": 3e-1, "Adagrad": 1.0, "SGD-Nesterov": 3.0}
# Sec. 6.1 (Fig. 1 right): Adagrad and Adam about equal; both ahead of SGD-Nesterov "by a large margin"
PARTS = [(margins.ABOUT_EQUAL, "Adagrad", "Adam"), (margins.WELL_AHEAD, "SGD-Nesterov", "Adam"), (margins.WELL_AHEAD, "SGD-Nesterov", "Adagrad")]
L2 = 1e-4
PAPER_REF = "Kingma & Ba (2015), Sec. 6.1, Fig. 1 (right)"
PAPER_STATEMENT = ("\"Adagrad outperforms SGD with Nesterov momentum by a large margin\" and \"Adam converges as fast as "
                   "Adagrad\" (IMDB bag-of-words, 10,000 features, 50 % dropout noise, logistic regression, α_t = α/√t)")


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
        return cls(vocabulary=2000, documents=10000, tokens=20, epochs=30)


def estimated_runs(settings: Settings, n_seeds: int) -> int:
    return len(START) * (6 * settings.tuning_seeds + n_seeds)


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


class _Zeros(nn.Module):
    """The logistic model's parameters as :func:`trial` starts them: zero weights and bias."""

    def __init__(self, vocabulary: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(vocabulary))
        self.bias = nn.Parameter(torch.zeros(()))


def trial_runs(name: str, runs: list[batched.Run], vocabulary: int, documents: int, tokens: int, epochs: int, batch_size: int,
               dropout: float) -> list[dict]:
    """:func:`trial` for every (lr, seed) in ``runs`` trained together: stacked weights (R, V), each run on its own seed's corpus
    with its own minibatch order and dropout masks (:mod:`.batched`)."""
    stack = batched.Stack(lambda: _Zeros(vocabulary), runs)
    optimizer = make_optimizer(name, stack.groups(), stack.lrs[0])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt)
    seeds = [runs[i][1] for i in stack.order]
    corpora = {seed: make_corpus(vocabulary, documents, tokens, seed) for seed in dict.fromkeys(seeds)}
    generators = [stack.generators[i] for i in stack.order]

    def penalty(weights: torch.Tensor) -> torch.Tensor:
        return 0.5 * L2 * weights.pow(2).sum(1)

    @torch.no_grad()
    def costs() -> list[float]:
        weights, bias = stack.params()
        values = torch.empty(len(seeds))
        for seed, (x, y) in corpora.items():  # one matrix product per corpus for all its runs
            rows = [k for k, s in enumerate(seeds) if s == seed]
            logits = torch.addmm(bias[rows], x, weights[rows].t())
            values[rows] = nn.functional.binary_cross_entropy_with_logits(logits, y[:, None].expand_as(logits), reduction="none").mean(0)
        return (values + penalty(weights)).tolist()

    curves = [[c] for c in costs()]
    alive = [True] * len(seeds)
    for _ in range(epochs):
        orders = [torch.randperm(documents, generator=g) for g in generators]
        for start in range(0, documents, batch_size):
            xs, ys = [], []
            for seed, order, g in zip(seeds, orders, generators):
                x, y = corpora[seed]
                index = order[start : start + batch_size]
                keep = (torch.rand(len(index), vocabulary, generator=g) >= dropout).float() / (1 - dropout)
                xs.append(x[index] * keep)
                ys.append(y[index])
            weights, bias = stack.params()
            logits = torch.baddbmm(bias[:, None, None], torch.stack(xs), weights[:, :, None]).squeeze(-1)
            per_run = nn.functional.binary_cross_entropy_with_logits(logits, torch.stack(ys), reduction="none").mean(1)
            optimizer.zero_grad()
            (per_run + penalty(weights)).sum().backward()  # run r's loss reaches only run r's slice
            optimizer.step()
            schedule.step()
        for k, c in enumerate(costs()):
            if alive[k]:
                curves[k].append(c)
                alive[k] = bool(np.isfinite(c))
        if not any(alive):
            break
    results: list[dict] = [{}] * len(runs)
    for k, i in enumerate(stack.order):
        results[i] = {"ticks": list(range(len(curves[k]))), "losses": curves[k]}
    return results


@batched.batchable(trial_runs, when=batched.on_accelerator)  # measured 0.9x on the CPU: the per-run dropout masks dominate
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


@lru_cache(maxsize=64)
def optimum(vocabulary: int, documents: int, tokens: int, seed: int) -> float:
    """f* of one seed's corpus: the minimum of the full-batch cost (no dropout) by scipy's L-BFGS in float64."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    x, y = (t.double().numpy() for t in make_corpus(vocabulary, documents, tokens, seed))

    def cost(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = x @ w + b
        value = -float(np.mean(y * log_expit(z) + (1 - y) * log_expit(-z))) + 0.5 * L2 * float(w @ w)
        g = (expit(z) - y) / len(y)
        return value, np.concatenate([x.T @ g + L2 * w, [g.sum()]])

    return float(minimize(cost, np.zeros(vocabulary + 1), jac=True, method="L-BFGS-B",
                          options={"maxiter": 20000, "gtol": 1e-8, "ftol": 1e-14}).fun)


def run(settings: Settings, seeds: list[int], runner: Runner) -> ExperimentResult:
    # the optima are independent of the training runs: solve them in the worker processes meanwhile
    optima = [runner.submit(optimum, {"vocabulary": settings.vocabulary, "documents": settings.documents, "tokens": settings.tokens,
                                      "seed": seed}) for seed in seeds]
    comparison = tuned_comparison(runner, trial, partial(_kwargs, settings=settings), training_cost, START, seeds, settings.tuning_seeds,
                                  score_name=TRAINING_COST)
    f_star = [min(optima[i].result(), *(min(rs[i]["losses"]) for rs in comparison.runs.values())) for i in range(len(seeds))]
    claims = [comparative_claim(
        comparison, list(START), PARTS, excess_gaps(lambda i: f_star[i]), quantity=EXCESS, setting="α",
        steps=settings.epochs * -(-settings.documents // settings.batch_size), paper_steps=None,
        key="sparse-training-cost",
        statement="Sparse bag-of-words with input dropout: Adam about as fast as Adagrad, both well ahead of SGD-Nesterov",
        paper_ref=PAPER_REF,
        paper_statement=PAPER_STATEMENT,
        kind=PAPER,
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
            "tuning": f"α on a 2× log grid, extended until bracketed, equal trials, {settings.tuning_seeds} tuning seed(s) that are not evaluated",
            "optimizers": "adamkit.Adam; torch.optim.Adagrad; torch.optim.SGD(momentum=0.9, nesterov=True)",
            "score": "tuning: training cost (no dropout) averaged over the last 10 % of epochs; verdict: the whole curve's log distance "
                     "above f* (f* per corpus by scipy L-BFGS, float64)",
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
