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

import numpy as np
import torch

import adamkit
from adamkit import kernels, memory
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


FLOOR = "bytes-only floor"
FLOOR_HUGE = "floor, huge pages"
FLOOR_LIKE_ADAMKIT = "floor, adamkit's pages"


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


def floor_contestants(params: list[torch.nn.Parameter]) -> list[Contestant]:
    """Bytes-only floors: one pass over p, g, m, v with trivial arithmetic, each thread a contiguous
    range. Three placements of the same bytes: flat buffers from torch's allocator (4 KiB pages unless
    THP_MEM_ALLOC_ENABLE=1), flat buffers on huge pages, and tensors laid out as adamkit's step sees
    them (parameters and gradients from torch's allocator, one per shape; moments where adamkit puts
    its state, adamkit.memory), so each ratio can be read against the floor on its own pages."""
    total = sum(p.numel() for p in params)
    flat = [torch.zeros(total) for _ in range(4)]
    huge = [memory.huge_zeros(total, torch.float32) for _ in range(4)]
    twins = [torch.zeros_like(p) for p in params] + [torch.zeros_like(p) for p in params]
    moments = [memory.zeros_like_param(p) for p in params] + [memory.zeros_like_param(p) for p in params]
    count = len(params)
    tables = [np.array([t.data_ptr() for t in tensors], dtype=np.int64)
              for tensors in (twins[:count], twins[count:], moments[:count], moments[count:])]
    prefix = np.zeros(count + 1, dtype=np.int64)
    np.cumsum([p.numel() for p in params], out=prefix[1:])
    threads = torch.get_num_threads()

    def on_state_pages(tensors=(twins, moments)) -> None:  # the default keeps the tables' tensors alive
        kernels.module().floor_tables(*tables, prefix, count, threads)

    return [
        Contestant(FLOOR, lambda: kernels.floor_flat_(*flat)),
        Contestant(FLOOR_HUGE, lambda: kernels.floor_flat_(*huge)),
        Contestant(FLOOR_LIKE_ADAMKIT, on_state_pages),
    ]


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
    everyone += floor_contestants(params)
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


def per_round_ratio(times: dict[str, list[float]], name: str, reference: str, rounds: list[int] | None = None) -> float:
    """Median over rounds (all, or ``rounds``) of (name's time / reference's time in the same round):
    the machine's memory speed changes in phases lasting seconds, and a ratio of two medians can mix
    them."""
    pairs = list(zip(times[name], times[reference]))
    return statistics.median(pairs[i][0] / pairs[i][1] for i in (range(len(pairs)) if rounds is None else rounds))


PHASE_GAP = 1.10  # a jump of 10 % between a floor's sorted round times: within a phase they vary a few %


def memory_phases(times: dict[str, list[float]], floor: str) -> dict[str, list[int]]:
    """The rounds of the machine's fast and slow memory phases, told apart by ``floor``'s time (it
    moves bytes only): split at the largest jump between its sorted round times, when that jump is
    over PHASE_GAP and each side has at least two rounds. Empty when the rounds form one phase."""
    values = times[floor]
    order = sorted(range(len(values)), key=values.__getitem__)
    jumps = [(values[order[k]] / values[order[k - 1]], k) for k in range(2, len(order) - 1)]
    if not jumps or max(jumps)[0] < PHASE_GAP:
        return {}
    split = max(jumps)[1]
    return {"fast memory phase": sorted(order[:split]), "slow memory phase": sorted(order[split:])}


def format_table(
    case: str,
    times: dict[str, list[float]],
    reference: str = "torch fused",
    floors: tuple[str, ...] = (FLOOR, FLOOR_LIKE_ADAMKIT, FLOOR_HUGE),
) -> str:
    """Median times and medians of per-round ratios to ``reference`` and to each floor present; when
    the rounds fall into two memory phases (memory_phases, by the first floor), the ratios of each
    phase follow."""
    columns = [name for name in (reference, *floors) if name in times]
    rounds = len(next(iter(times.values())))

    def table(title: str, selected: list[int] | None) -> list[str]:
        lines = [title, f"{'contestant':<28}{'median ms':>12}" + "".join(f"{'x ' + name:>26}" for name in columns)]
        for name, values in times.items():
            chosen = values if selected is None else [values[i] for i in selected]
            ratios = "".join(f"{per_round_ratio(times, name, column, selected):26.3f}" for column in columns)
            lines.append(f"{name:<28}{statistics.median(chosen) * 1e3:12.3f}{ratios}")
        return lines

    lines = table(f"case {case}: median step time; ratios are medians of per-round ratios (same run, {rounds} rounds)", None)
    phase_floor = next((name for name in floors if name in times), None)
    for phase, selected in (memory_phases(times, phase_floor) if phase_floor else {}).items():
        lines += table(f"{phase} ({len(selected)} of {rounds} rounds, told apart by the {phase_floor}'s time)", selected)
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
