"""How much faster `adamkit reproduce`'s logistic-regression runs are when R runs (seeds × learning
rates) train as one batched model instead of one after another.

Each run keeps its own weights (one leaf tensor per run, one optimizer param group per run, so each
has its own α_t = α/√t), its own minibatch order and its own full-batch cost; the forward pass
stacks the weights and uses one batched matmul for all runs, and adamkit's multi-tensor kernel
steps all of them in one call. The batched curves are compared with the sequential ones
(reproduce.logistic.trial) and the wall times of both are printed.

    PYTHONPATH=src python benchmarks/reproduce_batched.py [--runs 8] [--epochs 3]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

import adamkit
from adamkit.reproduce import data, logistic


def batched_logistic(lrs: list[float], seeds: list[int], l2: float, epochs: int, batch_size: int = 128, n_train: int = 5000) -> list[list[float]]:
    """The cost curves of len(lrs) Adam runs of reproduce.logistic.trial, trained together."""
    split = data.mnist(n_train=n_train, n_test=0)
    x, y = split.x_train, split.y_train
    weights, biases, generators = [], [], []
    for seed in seeds:  # the same initialisation as trial(): nn.Linear after seeding
        torch.manual_seed(seed)
        np.random.seed(seed)
        generators.append(torch.Generator().manual_seed(seed))
        layer = nn.Linear(784, 10)
        weights.append(nn.Parameter(layer.weight.detach().clone()))
        biases.append(nn.Parameter(layer.bias.detach().clone()))
    groups = [{"params": [w, b], "lr": lr} for w, b, lr in zip(weights, biases, lrs)]
    optimizer = adamkit.Adam(groups, lr=lrs[0])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / math.sqrt(step + 1))
    runs = len(lrs)

    def costs() -> list[float]:
        with torch.no_grad():
            w, b = torch.stack(weights), torch.stack(biases)  # (R, 10, 784), (R, 10)
            logits = torch.einsum("nd,rkd->rnk", x, w) + b[:, None, :]
            ce = nn.functional.cross_entropy(logits.reshape(-1, 10), y.repeat(runs), reduction="none").reshape(runs, -1).mean(dim=1)
            return (ce + 0.5 * l2 * w.pow(2).sum(dim=(1, 2))).tolist()

    curves = [[c] for c in costs()]
    n = len(x)
    batches = math.ceil(n / batch_size)
    for _ in range(epochs):
        orders = [torch.randperm(n, generator=g) for g in generators]
        for k in range(batches):
            index = torch.stack([o[k * batch_size : (k + 1) * batch_size] for o in orders])  # (R, B)
            w, b = torch.stack(weights), torch.stack(biases)
            logits = torch.bmm(x[index], w.transpose(1, 2)) + b[:, None, :]
            per_run = nn.functional.cross_entropy(logits.reshape(-1, 10), y[index].reshape(-1), reduction="none").reshape(runs, -1).mean(dim=1)
            loss = (per_run + 0.5 * l2 * w.pow(2).sum(dim=(1, 2))).sum()  # each run's gradient is its own
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if (k + 1) % (batches // 2) == 0 or k == batches - 1:
                for curve, c in zip(curves, costs()):
                    curve.append(c)
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lrs = [2e-3 * 2 ** (k % 4) for k in range(args.runs)]
    seeds = [k // 4 for k in range(args.runs)]
    start = time.perf_counter()
    sequential = [logistic.trial("Adam", lr, seed, l2=1e-3, epochs=args.epochs, batch_size=128, n_train=5000)["losses"]
                  for lr, seed in zip(lrs, seeds)]
    t_seq = time.perf_counter() - start
    start = time.perf_counter()
    batched = batched_logistic(lrs, seeds, 1e-3, args.epochs)
    t_bat = time.perf_counter() - start
    diff = max(abs(a - b) / abs(a) for s, bt in zip(sequential, batched) for a, b in zip(s, bt))
    print(f"{args.runs} runs x {args.epochs} epochs: sequential {t_seq:.2f} s, batched {t_bat:.2f} s, speed-up {t_seq / t_bat:.2f}x; "
          f"largest relative difference of the cost curves {diff:.2e} (float32 summation order)")


if __name__ == "__main__":
    main()
