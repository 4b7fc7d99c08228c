"""Compute cost per element of each storage mode: one thread, a cache-resident bucket.

With 2^18 elements the buffers sit in L2/L3, so the time is the kernel's arithmetic,
not DRAM bandwidth; compare the modes with each other and with the fp32 bytes floor.
Contestants are interleaved round by round; min and median over 55 timed rounds.

    PYTHONPATH=src python benchmarks/bench_lowprec_compute.py
"""

from __future__ import annotations

import statistics
import time

import torch

import adamkit
from adamkit.kernels import floor_flat_

SIZE = 1 << 18


def parameter(dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    param = torch.nn.Parameter(torch.randn(SIZE).to(dtype))
    param.grad = (torch.randn(SIZE) * 1e-3).to(dtype)
    return [param]


def main() -> None:
    torch.set_num_threads(1)
    floor_buffers = [torch.zeros(SIZE) for _ in range(4)]
    contestants = {
        "adamkit fp32": adamkit.AdamW(parameter()).step,
        "bf16 state": adamkit.AdamW(parameter(), state_dtype="bfloat16").step,
        "int8 state": adamkit.AdamW(parameter(), state_dtype="int8").step,
        "int8 m only": adamkit.AdamW(parameter(), exp_avg_dtype="int8").step,
        "bf16 p sr": adamkit.AdamW(parameter(torch.bfloat16), param_rounding="stochastic").step,
        "bf16 p nearest": adamkit.AdamW(parameter(torch.bfloat16)).step,
        "floor fp32": lambda: floor_flat_(*floor_buffers),
    }
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for round_index in range(60):
        for name, step in contestants.items():
            start = time.perf_counter()
            step()
            if round_index >= 5:
                times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name:16s} {min(values) / SIZE * 1e9:7.3f} ns/elem (min)  {statistics.median(values) / SIZE * 1e9:7.3f} median")


if __name__ == "__main__":
    main()
