"""What the bytes of an Adam step cost on this machine: each storage mode's floor, two ways, on
4 KiB pages and on huge pages.

A floor reads and writes the bytes a step moves (p and g, read-modify-write of p and the
moments) with trivial arithmetic. Two kernels per mode: the chunked one the benchmarks have used
(one loop per element width inside 4,096-element chunks) and a plain one (one loop per element,
each thread a contiguous half); each on buffers from torch's allocator (4 KiB pages unless
THP_MEM_ALLOC_ENABLE=1) and on buffers with MADV_HUGEPAGE (adamkit.memory). GPT-2-small's
124.4M elements, both threads; one mode at a time, its contestants back to back in every round;
ratios are medians of per-round ratios to the mode's chunked floor on torch's buffers, and of each
memory phase's rounds when they fall into two (adamkit.bench.memory_phases).

    chrt -f 10 python benchmarks/floors.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from adamkit import bench, memory
from adamkit.kernels import native
from adamkit.kernels.lowprec import floor_lowprec_

ELEMENTS = 124_439_808  # GPT-2 small
MODES = {  # name: (param dtype, state dtype)
    "fp32 (28 B)": (torch.float32, torch.float32),
    "bf16 m,v (20 B)": (torch.float32, torch.bfloat16),
    "int8 m,v (16 B)": (torch.float32, torch.uint8),
    "bf16 p,g,m,v (14 B)": (torch.bfloat16, torch.bfloat16),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    print(f"{ELEMENTS:,} elements, {torch.get_num_threads()} threads, {args.rounds} rounds; CPU {native.cpu_vendor()}, "
          f"THP mode {memory.thp_mode()}")
    # torch's allocator gives 4 KiB pages unless THP_MEM_ALLOC_ENABLE=1 asks it for huge ones
    torch_pages = "torch, huge pages" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else "torch, 4 KiB pages"
    print(f"{'floor':<46}{'median ms':>10}{'GB/s':>8}{'x chunked, torch':>18}   (medians of per-round ratios)")
    for name, (param_dtype, state_dtype) in MODES.items():  # one mode's buffers at a time
        contestants = {}
        for huge in (False, True):
            make = memory.huge_zeros if huge else (lambda numel, dtype: torch.zeros(numel, dtype=dtype))
            tensors = [make(ELEMENTS, dtype) for dtype in (param_dtype, param_dtype, state_dtype, state_dtype)]
            for plain in (False, True):
                label = f"{name}, {'plain' if plain else 'chunked'}, {'huge_zeros' if huge else torch_pages}"
                contestants[label] = floor_lowprec_(*tensors, plain=plain)
        times = bench.time_interleaved([bench.Contestant(label, one_pass) for label, one_pass in contestants.items()],
                                       args.rounds, args.warmup)
        first = next(iter(times))
        phases = bench.memory_phases(times, first)
        step_bytes = int(name.split("(")[1].split(" B)")[0])
        for label, values in times.items():
            median = statistics.median(values)
            by_phase = "".join(f"   {phase.split()[0]} {bench.per_round_ratio(times, label, first, rounds):.3f}"
                               for phase, rounds in phases.items())
            print(f"{label:<46}{median * 1e3:10.2f}{ELEMENTS * step_bytes / median / 1e9:8.1f}"
                  f"{bench.per_round_ratio(times, label, first):18.3f}{by_phase}")
        del contestants, tensors


if __name__ == "__main__":
    main()
