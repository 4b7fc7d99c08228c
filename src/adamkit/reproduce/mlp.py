"""Experiment 2: multilayer network with dropout on MNIST (Kingma & Ba, Sec. 6.2, Fig. 2a).

Two hidden ReLU layers with dropout 0.5, minibatch 128; Adam against Adagrad,
RMSprop, SGD with Nesterov momentum and Adadelta, every optimizer's constant
learning rate tuned on a bracketed log grid (the paper: "a dense grid") by the
training cost. The paper: Adam's training cost falls fastest.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial


from . import data, stats
from .common import (
    ExperimentResult, Figure, make_optimizer, mlp, seed_everything, train_classifier, TRAINING_COST,
    training_cost, training_cost_claim, training_cost_figure,
)
from .runner import Runner
from .tuning import tuned_comparison

NAME = "mlp"
TITLE = "Multilayer network with dropout on MNIST"
START = {"Adam": 1e-3, "Adagrad": 1e-2, "RMSprop": 5e-4, "SGD-Nesterov": 5e-2, "Adadelta": 1.0}
# Training costs within ±10 % count as alike (as in the CNN claim): a rival lower than Adam by less
# than that neither confirms nor refutes "Adam converges fastest".
TOLERANCE = 0.10
PAPER_REF = "Kingma & Ba (2015), Sec. 6.2, Fig. 2a"
PAPER_STATEMENT = ("MLP (2 × 1,000 ReLU, dropout) on MNIST, every method's hyperparameters chosen by a dense grid: "
                   "Adam converges fastest among the methods compared")


@dataclass
class Settings:
    hidden: int
    n_train: int
    epochs: int
    dropout: float = 0.5
    tuning_seeds: int = 2

    @classmethod
    def quick(cls) -> "Settings":
        return cls(hidden=64, n_train=1000, epochs=4, tuning_seeds=1)

    @classmethod
    def full(cls) -> "Settings":
        return cls(hidden=256, n_train=5000, epochs=30)


def estimated_runs(settings: Settings, n_seeds: int) -> int:
    return len(START) * (6 * settings.tuning_seeds + max(0, n_seeds - settings.tuning_seeds))


def trial(name: str, lr: float, seed: int, hidden: int, n_train: int, epochs: int, dropout: float) -> dict:
    split = data.mnist(n_train, 0)
    generator = seed_everything(seed)
    model = mlp([784, hidden, hidden, 10], dropout=dropout)
    optimizer = make_optimizer(name, model.parameters(), lr)
    ticks, losses = train_classifier(model, optimizer, split.x_train, split.y_train, epochs=epochs, batch_size=128,
                                     generator=generator, evals_per_epoch=2)
    return {"ticks": ticks, "losses": losses}


def rule(scores: dict[str, list[float]]) -> tuple[list[stats.Interval], bool | None]:
    """Every other optimizer's paired relative excess over Adam, (other − Adam)/Adam, is > 0;
    refuted only by a rival lower than Adam beyond the ±10 % band of alike results."""
    intervals = [stats.relative_interval(scores, n, "Adam") for n in scores if n != "Adam"]
    return intervals, stats.combine(*(stats.above_unless_alike(i, TOLERANCE) for i in intervals))


def run(settings: Settings, seeds: list[int], runner: Runner) -> ExperimentResult:
    make = partial(_kwargs, settings=settings)
    comparison = tuned_comparison(runner, trial, make, training_cost, START, seeds, settings.tuning_seeds,
                                  score_name=TRAINING_COST)
    claims = [training_cost_claim(
        comparison,
        list(START),
        rule(comparison.scores),
        setting="lr",
        key="mlp-training-cost",
        statement="Multilayer network with dropout on MNIST: Adam reaches the lowest training cost, every optimizer tuned",
        paper_ref=PAPER_REF,
        paper_statement=PAPER_STATEMENT,
        rule="reproduced when, for every other optimizer, the 95 % bootstrap interval of the paired per-seed (other − Adam)/Adam of "
             f"the score lies above 0; not reproduced when some optimizer's interval lies below −{TOLERANCE:.0%} (lower than Adam beyond "
             f"the ±{TOLERANCE:.0%} band of alike training costs); otherwise inconclusive",
    )]
    fig = training_cost_figure(
        comparison,
        list(START),
        setting="lr",
        xlabel=f"epoch (passes over {settings.n_train} digits)",
        ylabel="training cost, cross-entropy (nats, log)",
        title=f"784-{settings.hidden}-{settings.hidden}-10, dropout {settings.dropout} (band: min-max over seeds)",
    )
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source=PAPER_REF,
        setup={
            "data": f"MNIST, {settings.n_train} of the real digits",
            "model": f"784-{settings.hidden}-{settings.hidden}-10 ReLU MLP, dropout {settings.dropout} after each hidden layer",
            "training": f"minibatch 128, {settings.epochs} epochs, constant learning rate; cost evaluated twice per epoch",
            "tuning": f"lr on a 2× log grid, extended until bracketed, equal trials per optimizer, first {settings.tuning_seeds} seed(s)",
            "optimizers": "adamkit.Adam; torch.optim.Adagrad, RMSprop, SGD(momentum=0.9, nesterov=True), Adadelta",
            "training cost": "cross-entropy on the whole training set in eval mode (no dropout)",
            "seeds": seeds,
        },
        deviations=[
            f"hidden layers of {settings.hidden} units (the paper: 1,000)",
            f"{settings.n_train} bundled MNIST digits (the paper: 60,000)",
            f"{settings.epochs} epochs of our set; the paper's Fig. 2a runs 200 epochs of 60,000 images",
            "only the learning rate is tuned; β1, β2, momentum, ρ at their defaults",
        ],
        claims=claims,
        figures=[Figure("mlp", fig, "Training cost at each optimizer's tuned learning rate, and the tuning curves.")],
        seeds=seeds,
        extra={"chosen_lr": {n: c.chosen for n, c in comparison.curves.items()}},
    )


def _kwargs(name: str, lr: float, seed: int, *, settings: Settings) -> dict:
    return {"name": name, "lr": lr, "seed": seed, "hidden": settings.hidden, "n_train": settings.n_train,
            "epochs": settings.epochs, "dropout": settings.dropout}
