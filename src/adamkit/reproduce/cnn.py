"""Experiment 3: a convolutional network (Kingma & Ba, Sec. 6.3, Fig. 3), on MNIST instead of CIFAR-10.

A small CNN (two 3x3 convolution + max-pool stages, then a linear layer); Adam,
SGD with Nesterov momentum and Adagrad, each learning rate tuned on a bracketed log
grid by the training cost. The paper: Adagrad is quick early, Adam and SGD-Nesterov
converge similarly and end ahead of Adagrad.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from . import batched, data, margins
from .common import (
    PAPER, TARGET, ExperimentResult, Figure, comparative_claim, make_optimizer, seed_everything, target_gaps, train_classifier,
    TRAINING_COST, training_cost, training_cost_figure,
)
from .runner import Runner
from .tuning import tuned_comparison

NAME = "cnn"
TITLE = "Convolutional network (MNIST standing in for CIFAR-10)"
START = {"Adam": 2e-3, "SGD-Nesterov": 5e-2, "Adagrad": 2e-2}
# Sec. 6.3: Adam "shows marginal improvement over SGD with momentum" (about equal, not behind) and
# "Adam and SGD eventually converge considerably faster than AdaGrad" (well ahead)
PARTS = [(margins.ABOUT_EQUAL, "SGD-Nesterov", "Adam"), (margins.WELL_AHEAD, "Adagrad", "Adam"), (margins.WELL_AHEAD, "Adagrad", "SGD-Nesterov")]
PAPER_REF = "Kingma & Ba (2015), Sec. 6.3, Fig. 3"
PAPER_STATEMENT = ("\"Adam shows marginal improvement over SGD with momentum\"; \"Adam and SGD eventually converge considerably faster "
                   "than AdaGrad for CNNs\" (CIFAR-10, c64-c64-c128-1000, dropout; Adagrad quick in the first epochs)")
PAPER_STEPS = 45 * 391  # Fig. 3: 45 passes over 50,000 CIFAR-10 images in minibatches of 128


@dataclass
class Settings:
    channels: int
    n_train: int
    epochs: int
    tuning_seeds: int = 2
    paper_model: bool = False
    dataset: str = "mnist"  # or "cifar10" (only from --data-dir)
    data_dir: str | None = None
    device: str = "cpu"

    @classmethod
    def paper(cls, data_dir: str | None = None, device: str = "cpu") -> "Settings":
        """The paper's model (c64-c64-c128-1000) and horizon (45 passes over 50,000 images): CIFAR-10 under ``data_dir`` if
        there, else MNIST there, else as many steps over the bundled digits."""
        if data.has_cifar10(data_dir):
            return cls(channels=64, n_train=len(data.cifar10_from_dir(data_dir)[0]), epochs=45, paper_model=True, dataset="cifar10",
                       data_dir=data_dir, device=device)
        if data.has_mnist(data_dir):
            n = len(data.mnist_from_dir(data_dir)[0])
            return cls(channels=64, n_train=n, epochs=-(-PAPER_STEPS // -(-n // 128)), paper_model=True, data_dir=data_dir, device=device)
        return cls(channels=64, n_train=5000, epochs=-(-PAPER_STEPS // 40), paper_model=True, device=device)

    @classmethod
    def quick(cls) -> "Settings":
        return cls(channels=4, n_train=500, epochs=2, tuning_seeds=1)

    @classmethod
    def full(cls) -> "Settings":
        return cls(channels=8, n_train=5000, epochs=6)


def estimated_runs(settings: Settings, n_seeds: int) -> int:
    return len(START) * (6 * settings.tuning_seeds + n_seeds)


def make_cnn(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * channels * 7 * 7, 10),
    )


def paper_cnn(in_channels: int, size: int) -> nn.Sequential:
    """Sec. 6.3's network: three stages of 5x5 convolution and 3x3 max pooling with stride 2 (64, 64, 128 channels), a
    fully connected layer of 1,000 ReLU units with dropout, softmax output."""
    layers: list[nn.Module] = []
    channels, width = in_channels, size
    for out in (64, 64, 128):
        layers += [nn.Conv2d(channels, out, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
        channels, width = out, (width + 1) // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * width * width, 1000), nn.ReLU(), nn.Dropout(0.5), nn.Linear(1000, 10))


def _training_set(n_train: int, dataset: str, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    if dataset == "cifar10":
        x, y = data.cifar10_from_dir(data_dir)
        order = np.random.default_rng(0).permutation(len(x))[:n_train]
        return torch.from_numpy(x[order]), torch.from_numpy(y[order])
    split = data.mnist(n_train, 0, image=True, data_dir=data_dir)
    return split.x_train, split.y_train


def trial_runs(name: str, runs: list[batched.Run], channels: int, n_train: int, epochs: int, paper_model: bool = False,
               dataset: str = "mnist", data_dir: str | None = None, device: str = "cpu") -> list[dict]:
    """:func:`trial` for every (lr, seed) in ``runs``, trained as one batched model (grouped convolutions, :mod:`.batched`)."""
    x_train, y_train = _training_set(n_train, dataset, data_dir)
    build = (lambda: paper_cnn(x_train.shape[1], x_train.shape[2])) if paper_model else (lambda: make_cnn(channels))
    return batched.train_classifiers(name, build, runs, x_train, y_train, epochs=epochs, batch_size=128, evals_per_epoch=2, device=device)


@batched.batchable(trial_runs)
def trial(name: str, lr: float, seed: int, channels: int, n_train: int, epochs: int, paper_model: bool = False, dataset: str = "mnist",
          data_dir: str | None = None, device: str = "cpu") -> dict:
    x_train, y_train = _training_set(n_train, dataset, data_dir)
    generator = seed_everything(seed)
    model = (paper_cnn(x_train.shape[1], x_train.shape[2]) if paper_model else make_cnn(channels)).to(device)
    optimizer = make_optimizer(name, model.parameters(), lr)
    ticks, losses = train_classifier(model, optimizer, x_train.to(device), y_train.to(device), epochs=epochs, batch_size=128,
                                     generator=generator, evals_per_epoch=2)
    return {"ticks": ticks, "losses": losses}


def run(settings: Settings, seeds: list[int], runner: Runner) -> ExperimentResult:
    comparison = tuned_comparison(runner, trial, partial(_kwargs, settings=settings), training_cost, START, seeds, settings.tuning_seeds,
                                  score_name=TRAINING_COST)
    claims = [comparative_claim(
        comparison, list(START), PARTS, target_gaps, quantity=TARGET, setting="lr",
        steps=settings.epochs * -(-settings.n_train // 128), paper_steps=PAPER_STEPS,
        key="cnn-training-cost",
        statement="CNN: Adam about as fast as SGD-Nesterov, both considerably faster than Adagrad",
        paper_ref=PAPER_REF,
        paper_statement=PAPER_STATEMENT,
        kind=PAPER,
    )]
    fig = training_cost_figure(
        comparison,
        list(START),
        setting="lr",
        xlabel=f"epoch (passes over {settings.n_train} digits)",
        ylabel="training cost, cross-entropy (nats, log)",
        title="Small CNN on MNIST (band: min-max over seeds)",
    )
    return ExperimentResult(
        name=NAME,
        title=TITLE,
        source=PAPER_REF,
        setup={
            "data": f"MNIST 28x28, {settings.n_train} of the real digits",
            "model": ("the paper's c64-c64-c128-1000 (5x5 convolutions, 3x3 max pooling with stride 2, dropout before the output)"
                      if settings.paper_model else
                      f"conv3x3({settings.channels}) - ReLU - maxpool2 - conv3x3({2 * settings.channels}) - ReLU - maxpool2 - linear(10)"),
            "training": f"minibatch 128, {settings.epochs} epochs, constant learning rate; cost evaluated twice per epoch",
            "tuning": f"lr on a 2× log grid, extended until bracketed, equal trials per optimizer, {settings.tuning_seeds} tuning seed(s) that are not evaluated",
            "optimizers": "adamkit.Adam; torch.optim.SGD(momentum=0.9, nesterov=True); torch.optim.Adagrad",
            "seeds": seeds,
        },
        deviations=[
            "CIFAR-10 → MNIST (CIFAR-10 cannot be downloaded here): 5,000 bundled digits" if settings.n_train == 5000 else f"CIFAR-10 → {settings.n_train} MNIST digits",
            f"model c{settings.channels}-c{2 * settings.channels}-linear (the paper: c64-c64-c128-1000 with dropout and whitened inputs)",
            f"{settings.epochs} epochs (the paper's Fig. 3: 45 epochs of CIFAR-10)",
        ],
        claims=claims,
        figures=[Figure("cnn", fig, "Training cost of the CNN at each tuned learning rate, and the tuning curves.")],
        seeds=seeds,
        extra={"chosen_lr": {n: c.chosen for n, c in comparison.curves.items()}},
    )


def _kwargs(name: str, lr: float, seed: int, *, settings: Settings) -> dict:
    return {"name": name, "lr": lr, "seed": seed, "channels": settings.channels, "n_train": settings.n_train, "epochs": settings.epochs,
            "paper_model": settings.paper_model, "dataset": settings.dataset, "data_dir": settings.data_dir, "device": settings.device}
