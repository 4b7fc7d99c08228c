"""Soak benchmark: many optimizer steps on a small model, resident memory sampled.

    PYTHONPATH=src python benchmarks/soak.py --steps 100000 --every 1000

Trains a small MLP on generated data with an LR scheduler, calling
``state_dict()`` at every sample (a common source of leaks), and records the
process's resident set size (RSS, from /proc/self/statm) every ``--every``
steps after a ``gc.collect()``. The first sample is taken after ``--warmup``
steps, once allocator and autograd caches are filled; growth is measured from
there. Prints a Markdown report. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import sys
import time

import torch
from torch import nn

import adamkit

OPTIMIZERS = {
    "adamkit.AdamW": lambda params: adamkit.AdamW(params, lr=1e-3, weight_decay=1e-2),
    "adamkit.AdamW-amsgrad": lambda params: adamkit.AdamW(params, lr=1e-3, weight_decay=1e-2, amsgrad=True),
    "torch.optim.AdamW": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, foreach=False),
}


def rss_bytes() -> int:
    """Current resident set size; falls back to the peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def soak(optimizer_name: str, steps: int, every: int, warmup: int) -> dict:
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 10))
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=5000)
    targets = torch.randn(10, 32, generator=data)
    samples: list[tuple[int, int]] = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x = torch.randn(32, 32, generator=data)
        y = (x @ targets.T).argmax(dim=1)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step >= warmup and step % every == 0:
            optimizer.state_dict()
            gc.collect()
            samples.append((step, rss_bytes()))
            if step % (10 * every) == 0:
                print(f"  {optimizer_name}: step {step:,}, RSS {samples[-1][1] / 2**20:.2f} MiB, "
                      f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start
    return dict(optimizer=optimizer_name, steps=steps, seconds=elapsed, samples=samples, loss=loss.item())


def report(result: dict) -> str:
    samples = result["samples"]
    steps = [s for s, _ in samples]
    mib = [r / 2**20 for _, r in samples]
    half = len(samples) // 2
    lines = [
        f"### {result['optimizer']}: {result['steps']:,} steps in {result['seconds']:.0f} s "
        f"({1e6 * result['seconds'] / result['steps']:.0f} us/step), final loss {result['loss']:.3f}",
        "",
        f"- RSS at step {steps[0]:,}: {mib[0]:.2f} MiB; at step {steps[-1]:,}: {mib[-1]:.2f} MiB; "
        f"min {min(mib):.2f}, max {max(mib):.2f} MiB over {len(samples)} samples",
        f"- growth first -> last sample: {1024 * (mib[-1] - mib[0]):+.0f} KiB; "
        f"second half only: {1024 * (mib[-1] - mib[half]):+.0f} KiB",
        f"- least-squares slope: {1024 * 10_000 * slope(steps, mib):+.2f} KiB per 10,000 steps",
        "",
        "| step | RSS (MiB) |",
        "|---:|---:|",
    ]
    stride = max(1, len(samples) // 10)
    for step, value in list(zip(steps, mib))[::stride] + ([(steps[-1], mib[-1])] if (len(samples) - 1) % stride else []):
        lines.append(f"| {step:,} | {value:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=1_000, help="sample RSS every N steps")
    parser.add_argument("--warmup", type=int, default=1_000, help="first sampled step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), nargs="+", default=["adamkit.AdamW"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"Python {platform.python_version()}, torch {torch.__version__}, adamkit {adamkit.__version__}, "
        f"{platform.system()} {platform.machine()}, torch threads {torch.get_num_threads()}\n"
    )
    for name in args.optimizer:
        print(report(soak(name, args.steps, args.every, args.warmup)), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
