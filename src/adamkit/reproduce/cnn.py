"""Experiment 3: a convolutional network on MNIST (Kingma & Ba, Sec. 6.3, Fig. 3).

A small CNN (two 3x3 convolution + max-pool stages, then a linear layer), Adam
against SGD with Nesterov momentum and Adagrad. The paper: Adam and SGD converge
at a similar rate, both faster than Adagrad.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from . import data
from .common import Bar, Claim, ExperimentResult, Figure, band, new_figure, training_curves, verdict

NAME = "cnn"
TITLE = "Convolutional network on MNIST"
LEARNING_RATES = {"Adam": 1e-3, "SGD-Nesterov": 1e-2, "Adagrad": 1e-2}


@dataclass
class Settings:
    channels: int
    n_train: int
    epochs: int

    @classmethod
    def quick(cls) -> "Settings":
        return cls(channels=4, n_train=1000, epochs=6)

    @classmethod
    def full(cls) -> "Settings":
        return cls(channels=8, n_train=5000, epochs=6)


def total_work(settings: Settings, n_seeds: int) -> int:
    return len(LEARNING_RATES) * n_seeds * settings.epochs


def make_cnn(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * channels * 7 * 7, 10),
    )


def rule_cnn(final: dict[str, float]) -> bool:
    """Adam's mean final training cost is below Adagrad's and at most 1.1 × SGD-Nesterov's."""
    return final["Adam"] < final["Adagrad"] and final["Adam"] <= 1.1 * final["SGD-Nesterov"]


def run(settings: Settings, seeds: list[int], bar: Bar | None = None) -> ExperimentResult:
    split = data.mnist(settings.n_train, 0, image=True)
    ticks, curves, final = training_curves(
        LEARNING_RATES, seeds, lambda: make_cnn(settings.channels), split.x_train, split.y_train, settings.epochs, bar
    )
    claims = [
        Claim(
            key="cnn-training-cost",
            statement="CNN on MNIST: Adam trains as fast as SGD-Nesterov and faster than Adagrad",
            measured={f"{name} (lr {LEARNING_RATES[name]:g}) final training cost": m for name, m in final.items()},
            paper="Adam and SGD-Nesterov converge similarly, Adagrad more slowly (Kingma & Ba, Fig. 3)",
            rule="mean final training cost: Adam < Adagrad and Adam ≤ 1.1 × SGD-Nesterov",
            verdict=verdict(rule_cnn({name: m.mean for name, m in final.items()})),
        )
    ]
    fig, ax = new_figure()
    for name in LEARNING_RATES:
        band(ax, ticks, curves[name], f"{name}, lr {LEARNING_RATES[name]:g}")
    ax.set(yscale="log", xlabel=f"epoch (passes over {settings.n_train} digits)", ylabel="training cost, cross-entropy (nats, log scale)",
           title="Small CNN on MNIST (band: min-max over seeds)")
    ax.legend()
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source="Kingma & Ba (2015), Sec. 6.3, Fig. 3",
        setup={
            "data": f"MNIST 28x28, {settings.n_train} of the real digits",
            "model": f"conv3x3({settings.channels}) - ReLU - maxpool2 - conv3x3({2 * settings.channels}) - ReLU - maxpool2 - linear(10)",
            "training": f"minibatch 128, {settings.epochs} epochs, constant learning rates",
            "learning rates": LEARNING_RATES,
            "optimizers": "adamkit.Adam; torch.optim.SGD(momentum=0.9, nesterov=True); torch.optim.Adagrad",
            "seeds": seeds,
        },
        claims=claims,
        figures=[Figure("cnn", fig, "Training cost of the CNN (band: min-max over seeds).")],
        seeds=seeds,
    )
