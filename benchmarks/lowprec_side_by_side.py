"""The low-precision kernel call alone, side by side with another build of it and the mode's floor.

For each storage mode, on GPT-2-small's tensors laid end to end in one bucket: this process's
kernel module (the build ADAMKIT_ISA picks), the same instruction set's build from --reference (a
folder of shipped builds, e.g. another checkout's src/adamkit/kernels), and the mode's bytes-only
plain floor, called back to back in every round (adamkit.bench.time_interleaved), each on its own
buffers, both threads. The summary is the median over rounds of each round's ratio to the floor,
so both builds are compared in the same memory phases (the machine's memory speed changes in
phases lasting seconds). Kernel call only: no optimizer, no gradient gather.

    chrt -f 10 python benchmarks/lowprec_side_by_side.py --reference ../main/src/adamkit/kernels [--rounds 10]
    chrt -f 10 python benchmarks/lowprec_side_by_side.py --reference src/adamkit/kernels --reference-isa avx512   # one level beside another
"""

from __future__ import annotations

import argparse
import importlib.machinery
import statistics
from pathlib import Path

import numpy as np
import torch

from adamkit import bench, kernels
from adamkit.kernels import verify
from adamkit.kernels.build import import_module_file

from lowprec_arithmetic import MODES, mode_floor  # the same modes and floors (a script beside this one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="folder holding the reference builds (_adam_<isa>*.so)")
    parser.add_argument("--reference-isa", help="the reference's level (default: the one in use; e.g. avx512 beside avx512bf16)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    args = parser.parse_args()
    module = kernels.module()
    level = args.reference_isa or module.ISA
    reference = import_module_file(f"_adam_{level}", args.reference / f"_adam_{level}{importlib.machinery.EXTENSION_SUFFIXES[0]}")
    threads = torch.get_num_threads()
    sizes = [int(np.prod(shape)) for shape in bench.CASES["gpt2"]()]
    print(f"{threads} threads, this tree's {module.ISA} build beside the reference's {level}; {sum(sizes) / 1e6:.1f}M elements in {len(sizes)} tensors")
    scalars = verify.step_scalars(False, 0)
    for name in args.modes:
        mode, rounding, param_dtype, state_dtype = MODES[name]
        states = [verify.make_inputs(sizes, mode, False, rounding, np.random.default_rng(0), True) for _ in range(2)]
        floor = mode_floor(sum(sizes), param_dtype, state_dtype, plain=True)
        times = bench.time_interleaved(
            [
                bench.Contestant("this tree", lambda: verify.run_step(module, states[0], mode, rounding, scalars, threads=threads)),
                bench.Contestant("reference", lambda: verify.run_step(reference, states[1], mode, rounding, scalars, threads=threads)),
                bench.Contestant("floor", floor),
            ],
            args.rounds,
            warmup=3,
        )
        medians = {key: statistics.median(value) * 1e3 for key, value in times.items()}
        print(f"{name:14s} ms: this tree {medians['this tree']:.2f}, reference {medians['reference']:.2f}, floor {medians['floor']:.2f};"
              f"  x floor (per-round medians): this tree {bench.per_round_ratio(times, 'this tree', 'floor'):.3f},"
              f" reference {bench.per_round_ratio(times, 'reference', 'floor'):.3f}", flush=True)
        del states, floor


if __name__ == "__main__":
    main()
