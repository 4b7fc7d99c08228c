"""Side-by-side timing of one optimizer step (``adamkit bench`` and benchmarks/).

Every contestant steps the same parameters and gradients with its own state;
contestants are interleaved round by round so machine noise hits them alike,
and the figure reported is the median over the timed rounds, as a ratio to
torch's fused step measured in the same run.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

import adamkit
from adamkit import kernels
from adamkit.kernels import gather

# GPT-2 small: 124.4M parameters in 148 tensors (its 12 layers, embeddings and layer norms).
_GPT2_BLOCK = [(768,), (768,), (768, 2304), (2304,), (768, 768), (768,), (768,), (768,), (768, 3072), (3072,), (3072, 768), (768,)]
CASES: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "gpt2": lambda: [(50257, 768), (1024, 768)] + _GPT2_BLOCK * 12 + [(768,), (768,)],
    "many-small": lambda: [(1000,)] * 20_000,
    "tiny": lambda: [(32, 64), (32,), (10, 32), (10,)],
    "quick": lambda: [(4096, 256), (256,)] + [(256, 768), (768,), (256, 256), (256,), (256, 1024), (1024,), (1024, 256), (256,)] * 4,
}
# Cases timed the way trainers call the step: zero_grad(set_to_none=True), then gradients in fresh
# tensors (as backward makes them) before every step.
TRAINER_CASES = {f"{name}-trainer": name for name in ("gpt2", "many-small", "quick")}
CASES.update({trainer: CASES[name] for trainer, name in TRAINER_CASES.items()})


@dataclass
class Contestant:
    name: str
    step: Callable[[], None]
    prepare: Callable[[], None] | None = None  # untimed, before each step (fresh gradients)


def make_params(shapes: list[tuple[int, ...]], seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        param = torch.nn.Parameter(torch.randn(shape, generator=generator) * 0.02)
        param.grad = torch.randn(shape, generator=generator) * 1e-3
        params.append(param)
    return params


def torch_contestants(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> list[Contestant]:
    contestants = []
    for name, kwargs in (
        ("torch for-loop", dict(foreach=False)),
        ("torch foreach", dict(foreach=True)),
        ("torch fused", dict(fused=True)),
    ):
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kwargs)
        contestants.append(Contestant(name, optimizer.step, fresh_gradients(params, optimizer.zero_grad)))
    return contestants


def fresh_gradients(params: list[torch.nn.Parameter], optimizer_zero_grad: Callable[..., None]) -> Callable[[], None]:
    """A prepare step: the optimizer's zero_grad(set_to_none=True), then new gradient tensors."""
    sources = [p.grad.clone() for p in params]

    def prepare() -> None:
        optimizer_zero_grad(set_to_none=True)
        for param, source in zip(params, sources):
            param.grad = torch.empty_like(param).copy_(source)

    return prepare


def adamkit_contestants(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> list[Contestant]:
    contestants = []
    for name, kwargs in (("adamkit", {}), ("adamkit loop path", dict(fused=False))):
        optimizer = adamkit.AdamW(params, lr=lr, weight_decay=weight_decay, **kwargs)
        contestants.append(Contestant(name, optimizer.step, fresh_gradients(params, optimizer.zero_grad)))
    if gather.loaded() is not None:
        # The kernel path with its per-step gradient gather done in Python, to show what the
        # compiled gather saves.
        optimizer = adamkit.AdamW(params, lr=lr, weight_decay=weight_decay)

        def step_with_python_gather() -> None:
            with gather.python_only():
                optimizer.step()

        contestants.append(Contestant("adamkit, Python gather", step_with_python_gather, fresh_gradients(params, optimizer.zero_grad)))
    return contestants


def floor_contestant(params: list[torch.nn.Parameter]) -> Contestant:
    """The bytes-only floor: one pass over flat p, g, m, v buffers of the same total size."""
    total = sum(p.numel() for p in params)
    buffers = [torch.zeros(total) for _ in range(4)]
    return Contestant("bytes-only floor", lambda: kernels.floor_flat_(*buffers))


def run_case(
    case: str,
    steps: int = 10,
    warmup: int = 3,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    skip: tuple[str, ...] = (),
) -> dict[str, list[float]]:
    """Seconds per step of each contestant on ``case``, round by round (time_interleaved)."""
    params = make_params(CASES[case]())
    try:
        gather.load()  # wait for the compiled gradient gather rather than time its build
    except kernels.KernelBuildError as error:
        print(f"compiled gradient gather unavailable, timing the Python gather: {error}")
    everyone = adamkit_contestants(params, lr, weight_decay) + torch_contestants(params, lr, weight_decay)
    if case not in TRAINER_CASES:  # gradients stay where they are between steps
        for contestant in everyone:
            contestant.prepare = None
    everyone.append(floor_contestant(params))
    return time_interleaved([c for c in everyone if c.name not in skip], steps, warmup)


def time_interleaved(contestants: list[Contestant], steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each contestant's step in each round; the contestants step back to back in every
    round, so a round's ratios compare them in the same memory phase (see :func:`format_table`)."""
    times: dict[str, list[float]] = {c.name: [] for c in contestants}
    for round_index in range(warmup + steps):
        for contestant in contestants:
            if contestant.prepare is not None:
                contestant.prepare()
            gc.disable()
            start = time.perf_counter()
            contestant.step()
            elapsed = time.perf_counter() - start
            gc.enable()
            if round_index >= warmup:
                times[contestant.name].append(elapsed)
    return times


def _rss_mib(field: str) -> float:
    _release_free_heap()
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc), so RSS shows live memory, not allocator caches."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


MEMORY_SUBJECTS = {
    "adamkit": lambda params: adamkit.AdamW(params, lr=1e-3, weight_decay=1e-2),
    "torch fused": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, fused=True),
}


def measure_memory(case: str, subject: str = "adamkit", steps: int = 3) -> dict[str, float]:
    """RSS (MiB) around ``subject``'s steps on ``case``: what the optimizer adds beyond params + grads.

    Run it in a fresh process, once per subject. RSS is read after ``malloc_trim`` so
    freed memory does not count as live. The first step's peak (it allocates the state)
    is VmHWM; the peak of a steady-state step is read from VmHWM after resetting it
    (``/proc/self/clear_refs``).
    """
    params = make_params(CASES[case]())
    gc.collect()
    baseline = _rss_mib("VmRSS")
    optimizer = MEMORY_SUBJECTS[subject](params)
    optimizer.step()
    after_first = _rss_mib("VmRSS")
    first_peak = _rss_mib("VmHWM")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak-RSS mark
    for _ in range(steps):
        optimizer.step()
    state_mib = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim()) / 2**20
    return {
        "params_and_grads_mib": 2 * sum(p.numel() * p.element_size() for p in params) / 2**20,
        "state_mib": state_mib,
        "rss_growth_after_first_step_mib": after_first - baseline,
        "first_step_peak_over_baseline_mib": first_peak - baseline,
        "steady_step_peak_over_rss_mib": _rss_mib("VmHWM") - after_first,
    }


def per_round_ratio(times: dict[str, list[float]], name: str, reference: str) -> float:
    """Median over rounds of (name's time / reference's time in the same round): the machine's
    memory speed changes in phases lasting seconds, and a ratio of two medians can mix them."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


def format_table(case: str, times: dict[str, list[float]], reference: str = "torch fused", floor: str = "bytes-only floor") -> str:
    columns = [name for name in (reference, floor) if name in times]
    lines = [
        f"case {case}: median step time; ratios are medians of per-round ratios (same run, {len(next(iter(times.values())))} rounds)",
        f"{'contestant':<28}{'median ms':>12}" + "".join(f"{'x ' + name:>22}" for name in columns),
    ]
    for name, values in times.items():
        ratios = "".join(f"{per_round_ratio(times, name, column):22.3f}" for column in columns)
        lines.append(f"{name:<28}{statistics.median(values) * 1e3:12.3f}{ratios}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="shape set to time (repeatable; default: quick)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per contestant after warm-up (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    parser.add_argument("--memory", choices=sorted(MEMORY_SUBJECTS), help="report this optimizer's RSS growth on the first case, then exit (run each in its own process)")
    parser.add_argument("--skip", action="append", default=[], help="contestant to leave out (repeatable), e.g. 'torch for-loop'")


def main(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise SystemExit(f"adamkit bench: --steps must be >= 1, got {args.steps}")
    cases = args.case or ["quick"]
    if args.memory:
        # Alone in this process: nothing else has touched the heap.
        for key, value in measure_memory(cases[0], args.memory).items():
            print(f"memory {cases[0]}, {args.memory}: {key} = {value:.1f}")
        return 0
    for case in cases:
        times = run_case(case, steps=args.steps, warmup=args.warmup, skip=tuple(args.skip))
        print(format_table(case, times))
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process so far: {peak_mib:.0f} MiB\n")
    return 0
