"""Experiment 2: multilayer network on MNIST (Kingma & Ba, Sec. 6.2, Fig. 2a).

Two hidden layers of 1,000 ReLU units with dropout, minibatch 128; Adam against
Adagrad, RMSprop, SGD with Nesterov momentum and Adadelta at their customary
learning rates. The paper: Adam's training cost falls fastest.
"""

from __future__ import annotations

from dataclasses import dataclass


from . import data
from .common import Bar, Claim, ExperimentResult, Figure, band, mlp, new_figure, training_curves, verdict

NAME = "mlp"
TITLE = "Multilayer network on MNIST"
LEARNING_RATES = {"Adam": 1e-3, "Adagrad": 1e-2, "RMSprop": 1e-3, "SGD-Nesterov": 1e-1, "Adadelta": 1.0}


@dataclass
class Settings:
    hidden: int
    n_train: int
    epochs: int
    dropout: float = 0.5

    @classmethod
    def quick(cls) -> "Settings":
        return cls(hidden=128, n_train=1000, epochs=12)

    @classmethod
    def full(cls) -> "Settings":
        return cls(hidden=1000, n_train=3000, epochs=6)


def total_work(settings: Settings, n_seeds: int) -> int:
    return len(LEARNING_RATES) * n_seeds * settings.epochs


def rule_fastest(final: dict[str, float]) -> bool:
    """Adam's mean final training cost is the lowest, or within 5 % of the lowest."""
    return final["Adam"] <= 1.05 * min(final.values())


def run(settings: Settings, seeds: list[int], bar: Bar | None = None) -> ExperimentResult:
    split = data.mnist(settings.n_train, 0)
    ticks, curves, final = training_curves(
        LEARNING_RATES, seeds, lambda: mlp([784, settings.hidden, settings.hidden, 10], dropout=settings.dropout), split.x_train, split.y_train, settings.epochs, bar
    )
    claims = [
        Claim(
            key="mlp-training-cost",
            statement="Multilayer network with dropout on MNIST: Adam's training cost falls fastest",
            measured={f"{name} (lr {LEARNING_RATES[name]:g}) final training cost": m for name, m in final.items()},
            paper="Adam converges faster than Adagrad, RMSprop, SGD-Nesterov and AdaDelta (Kingma & Ba, Fig. 2a)",
            rule="Adam's mean final training cost ≤ 1.05 × the lowest of all optimizers",
            verdict=verdict(rule_fastest({name: m.mean for name, m in final.items()})),
        )
    ]
    fig, ax = new_figure(width=7.5)
    for name in LEARNING_RATES:
        band(ax, ticks, curves[name], f"{name}, lr {LEARNING_RATES[name]:g}")
    ax.set(yscale="log", xlabel=f"epoch (passes over {settings.n_train} digits)", ylabel="training cost, cross-entropy (nats, log scale)",
           title=f"MLP 784-{settings.hidden}-{settings.hidden}-10 with dropout {settings.dropout} (band: min-max over seeds)")
    ax.legend()
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source="Kingma & Ba (2015), Sec. 6.2, Fig. 2a",
        setup={
            "data": f"MNIST, {settings.n_train} of the real digits",
            "model": f"784-{settings.hidden}-{settings.hidden}-10 ReLU MLP, dropout {settings.dropout} on hidden layers",
            "training": f"minibatch 128, {settings.epochs} epochs, constant learning rates (no grid)",
            "learning rates": LEARNING_RATES,
            "optimizers": "adamkit.Adam; torch.optim.Adagrad, RMSprop, SGD(momentum=0.9, nesterov=True), Adadelta",
            "training cost": "cross-entropy on the whole training set in eval mode (no dropout)",
            "seeds": seeds,
        },
        claims=claims,
        figures=[Figure("mlp", fig, "Training cost of the multilayer network (band: min-max over seeds).")],
        seeds=seeds,
    )
