"""Step time of adamkit's low-precision modes, each next to its own bytes-only floor.

AdamW on GPT-2-small shapes (or another adamkit.bench case). In one process,
round by round, it times torch's fused fp32 step (the reference), adamkit fp32,
adamkit with bf16 m and v, with int8 m and v, with int4 m and v, and with bf16 params + bf16 state +
stochastic rounding, plus torch fused on bf16 params, and bitsandbytes' AdamW8bit
when it is installed and has a CPU backend (benchmark environment only:
``pip install bitsandbytes``; not an adamkit dependency). Each mode comes with a
bytes-only floor pass: the same element reads and writes with trivial arithmetic
(fp32 28 B/param; bf16 state 20; int8 state 16 plus scales; int4 state 14 plus scales: fp32
p, g and half a byte each of m and v, read and written; all bf16 14), on the pages
adamkit's step uses (parameters and gradients from torch's allocator, state on huge pages where
adamkit puts its own), and the fp32 floor with every buffer on huge pages too. Every
contestant has its own parameters and state. When the rounds fall into the machine's two memory
phases (adamkit.bench.memory_phases), the mode ratios of each phase follow.
Also reports int8 and int4 state bytes per parameter, measured from the state dict.

    PYTHONPATH=src python benchmarks/bench_lowprec.py --case gpt2 [--steps 10 --warmup 3]
"""

from __future__ import annotations

import argparse

import torch

import adamkit
from adamkit import bench, memory
from adamkit.kernels import floor_flat_
from adamkit.kernels.lowprec import floor_lowprec_

LR, WEIGHT_DECAY = 1e-3, 1e-2


def params_for(shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    params = bench.make_params(shapes)
    if dtype == torch.float32:
        return params
    converted = []
    for param in params:
        low = torch.nn.Parameter(param.detach().to(dtype))
        low.grad = param.grad.to(dtype)
        converted.append(low)
    return converted


def floor(
    total: int, param_dtype: torch.dtype, state_dtype: torch.dtype, huge_params: bool = False, half: bool = False
) -> bench.Contestant:
    """A mode's bytes-only floor, on the pages adamkit's step uses: parameters and gradients from
    torch's allocator (``huge_params``: on huge pages too), the state where adamkit puts its own
    (adamkit.memory: huge pages where the system gives them on request). ``half``: uint8 moments
    of half the length (int4)."""
    make_params = memory.huge_zeros if huge_params else (lambda numel, dtype: torch.zeros(numel, dtype=dtype))
    p, g = make_params(total, param_dtype), make_params(total, param_dtype)
    state_numel = (total + 1) // 2 if half else total
    m, v = (memory.on_huge_pages(torch.zeros(state_numel, dtype=state_dtype)) for _ in range(2))
    if param_dtype == state_dtype == torch.float32:
        return lambda: floor_flat_(p, g, m, v)
    return floor_lowprec_(p, g, m, v, plain=True)  # one loop per element: 3-7 % faster (benchmarks/floors.py)


def bitsandbytes_adamw8bit(shapes: list[tuple[int, ...]]):
    """bitsandbytes' 8-bit AdamW on CPU (benchmark environment only, never an adamkit dependency).

    Returns its step, or None with a printed reason when bitsandbytes is not installed or cannot
    step on CPU (one trial step on a small tensor decides).
    """
    try:
        import bitsandbytes
    except ImportError as error:
        print(f"skipping bitsandbytes AdamW8bit: bitsandbytes is not importable ({error})")
        return None
    # AdamW8bit is the 8-bit entry point; older releases spell it AdamW(optim_bits=8).
    make = getattr(bitsandbytes.optim, "AdamW8bit", None) or (
        lambda params, **kw: bitsandbytes.optim.AdamW(params, optim_bits=8, **kw)
    )
    try:
        trial = params_for([(4096, 2)])
        make(trial, lr=LR, weight_decay=WEIGHT_DECAY).step()
    except Exception as error:  # noqa: BLE001  (any failure means: no usable CPU backend)
        print(f"skipping bitsandbytes AdamW8bit: no CPU backend in bitsandbytes {bitsandbytes.__version__} ({error!r})")
        return None
    print(f"bitsandbytes {bitsandbytes.__version__}: {make.__module__}.{getattr(make, '__name__', 'AdamW')} on CPU")
    return make(params_for(shapes), lr=LR, weight_decay=WEIGHT_DECAY).step


def contestants(shapes: list[tuple[int, ...]], skip: tuple[str, ...]) -> tuple[list[bench.Contestant], dict[str, float]]:
    total = sum(torch.Size(shape).numel() for shape in shapes)
    entries: list[tuple[str, object]] = []
    notes: dict[str, float] = {}

    def add(name: str, make) -> None:
        if name not in skip:
            entries.append((name, make()))

    add("torch fused fp32", lambda: torch.optim.AdamW(params_for(shapes), lr=LR, weight_decay=WEIGHT_DECAY, fused=True).step)
    add("adamkit fp32", lambda: adamkit.AdamW(params_for(shapes), lr=LR, weight_decay=WEIGHT_DECAY).step)
    add("floor fp32 (28 B)", lambda: floor(total, torch.float32, torch.float32))
    add("floor fp32, huge pages", lambda: floor(total, torch.float32, torch.float32, huge_params=True))
    add("adamkit bf16 m,v", lambda: adamkit.AdamW(params_for(shapes), lr=LR, weight_decay=WEIGHT_DECAY, state_dtype="bfloat16").step)
    add("floor bf16 m,v (20 B)", lambda: floor(total, torch.float32, torch.bfloat16))
    int8 = adamkit.AdamW(params_for(shapes), lr=LR, weight_decay=WEIGHT_DECAY, state_dtype="int8")
    add("adamkit int8 m,v", lambda: int8.step)
    add("floor int8 m,v (16 B)", lambda: floor(total, torch.float32, torch.uint8))
    int4 = adamkit.AdamW(params_for(shapes), lr=LR, weight_decay=WEIGHT_DECAY, state_dtype="int4")
    add("adamkit int4 m,v", lambda: int4.step)
    add("floor int4 m,v (14 B)", lambda: floor(total, torch.float32, torch.uint8, half=True))
    add(
        "adamkit bf16 p,m,v sr",
        lambda: adamkit.AdamW(
            params_for(shapes, torch.bfloat16), lr=LR, weight_decay=WEIGHT_DECAY, param_rounding="stochastic"
        ).step,
    )
    add("floor bf16 p,g,m,v (14 B)", lambda: floor(total, torch.bfloat16, torch.bfloat16))
    add(
        "torch fused bf16 p (no sr)",
        lambda: torch.optim.AdamW(params_for(shapes, torch.bfloat16), lr=LR, weight_decay=WEIGHT_DECAY, fused=True).step,
    )
    if "bitsandbytes AdamW8bit" not in skip:
        bnb_step = bitsandbytes_adamw8bit(shapes)
        if bnb_step is not None:
            entries.append(("bitsandbytes AdamW8bit", bnb_step))
    # int8 / int4 state bytes per parameter, measured from a state dict after one step (int4: the
    # parameters it applies to, >= 2 dims with an even last dimension; the others keep int8 or float32).
    for name, optimizer in (("int8", int8), ("int4", int4)):
        optimizer.step()
        state = optimizer.state_dict()["state"]
        state_bytes = sum(t.numel() * t.element_size() for s in state.values() for k, t in s.items() if k != "step")
        notes[f"{name} state bytes/param"] = state_bytes / total
        if name == "int4":
            params = optimizer.param_groups[0]["params"]
            packed = [i for i, p in enumerate(params) if "exp_avg_int4" in optimizer.state[p]]
            packed_bytes = sum(t.numel() * t.element_size() for i in packed for k, t in state[i].items() if k != "step")
            notes["int4 state bytes/param (int4 tensors)"] = packed_bytes / sum(params[i].numel() for i in packed)
    return [bench.Contestant(name, step) for name, step in entries], notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_arguments(parser)
    args = parser.parse_args()
    case = (args.case or ["gpt2"])[0]
    everyone, notes = contestants(bench.CASES[case](), tuple(args.skip))
    times = bench.time_interleaved(everyone, args.steps, args.warmup)
    print(bench.format_table(case, times, reference="torch fused fp32", floors=("floor fp32 (28 B)", "floor fp32, huge pages")))
    phases = bench.memory_phases(times, "floor fp32 (28 B)") if "floor fp32 (28 B)" in times else {}
    for title, rounds in {"all rounds": None, **phases}.items():
        print(f"\nmode ratios to their own bytes floor (medians of per-round ratios), {title}:")
        for mode, floor_name in (
            ("adamkit fp32", "floor fp32 (28 B)"),
            ("adamkit bf16 m,v", "floor bf16 m,v (20 B)"),
            ("adamkit int8 m,v", "floor int8 m,v (16 B)"),
            ("adamkit int4 m,v", "floor int4 m,v (14 B)"),
            ("adamkit bf16 p,m,v sr", "floor bf16 p,g,m,v (14 B)"),
        ):
            if mode in times and floor_name in times:
                print(f"  {mode:<26} {bench.per_round_ratio(times, mode, floor_name, rounds):6.3f} x {floor_name}")
    if "bitsandbytes AdamW8bit" in times and "adamkit int8 m,v" in times:
        print(f"  bitsandbytes AdamW8bit / adamkit int8: {bench.per_round_ratio(times, 'bitsandbytes AdamW8bit', 'adamkit int8 m,v'):.1f} x")
    for name, value in notes.items():
        print(f"{name}: {value:.4f}")
    print(f"threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
