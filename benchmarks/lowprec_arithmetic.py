"""Is a low-precision step limited by arithmetic or by memory? Kernel without DRAM vs the bytes floor.

For each storage mode, times the fused kernel (the optimizer's own build, all threads) on a
bucket small enough to stay in L3 — no DRAM traffic, so its time per element is the arithmetic —
and on a GPT-2-sized bucket, next to that mode's bytes-only floor pass over GPT-2-sized buffers.
Interleaved round by round (adamkit.bench.time_interleaved), medians, ns per element. If the L3-resident kernel is already slower
than the floor, no memory optimisation can bring the step down to the floor: only fewer
instructions per element (wider vectors) can.

    PYTHONPATH=src python benchmarks/lowprec_arithmetic.py [--rounds 10]
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from adamkit import bench, kernels
from adamkit.kernels import lowprec, verify
from adamkit.kernels.lowprec import floor_lowprec_

CACHED, GPT2 = 1 << 20, 124_000_000
MODES = {  # name: (exp_avg, exp_avg_sq, param) formats, rounding, param dtype, state dtype of the floor ("int4": half a byte)
    "bf16 m,v": ((1, 1, 0), 0, torch.float32, torch.bfloat16),
    "int8 m,v": ((2, 2, 0), 0, torch.float32, torch.uint8),
    "int4 m,v": ((3, 3, 0), 0, torch.float32, "int4"),
    "bf16 p,m,v sr": ((1, 1, 1), 1, torch.bfloat16, torch.bfloat16),
}


def mode_floor(elements: int, param_dtype: torch.dtype, state_dtype: torch.dtype | str, plain: bool = False):
    """A mode's bytes-only floor pass over ``elements`` elements (int4 moments: two elements a byte)."""
    def moment() -> torch.Tensor:
        return torch.zeros((elements + 1) // 2, dtype=torch.uint8) if state_dtype == "int4" else torch.zeros(elements, dtype=state_dtype)

    return floor_lowprec_(torch.zeros(elements, dtype=param_dtype), torch.zeros(elements, dtype=param_dtype), moment(), moment(), plain=plain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    module = kernels.module()
    print(f"{threads} threads; kernel: the {module.ISA} build, {lowprec.lanes((0, 2, 2))} lanes")
    for name, (mode, rounding, param_dtype, state_dtype) in MODES.items():
        library = module
        cached = verify.make_inputs([CACHED], mode, False, rounding, np.random.default_rng(0), True)
        dram = verify.make_inputs([GPT2], mode, False, rounding, np.random.default_rng(0), True)
        floor = mode_floor(GPT2, param_dtype, state_dtype)
        scalars = verify.step_scalars(False, 0)

        def in_cache() -> None:
            for _ in range(20):
                verify.run_step(library, cached, mode, rounding, scalars, threads=threads)

        seconds = bench.time_interleaved(
            [
                bench.Contestant("kernel, L3-resident", in_cache),
                bench.Contestant("kernel, GPT-2 size", lambda: verify.run_step(library, dram, mode, rounding, scalars, threads=threads)),
                bench.Contestant("floor, GPT-2 size", floor),
            ],
            args.rounds,
            warmup=3,
        )
        elements = {"kernel, L3-resident": 20 * CACHED, "kernel, GPT-2 size": GPT2, "floor, GPT-2 size": GPT2}
        medians = {key: statistics.median(value) / elements[key] * 1e9 for key, value in seconds.items()}
        print(f"{name:14s} " + "  ".join(f"{key} {value:.3f}" for key, value in medians.items())
              + f"  ns/elem; arithmetic alone = {medians['kernel, L3-resident'] / medians['floor, GPT-2 size']:.2f} x floor")
        del dram, floor


if __name__ == "__main__":
    main()
