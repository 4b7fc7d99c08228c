"""Check a changed low-precision kernel against an earlier revision, bit for bit, and time both.

Builds the kernel module from this tree's sources and from a git revision's (``--reference-rev``;
revisions with src/adamkit/kernels/module.cpp, i.e. since the kernels became a module; or
``--reference DIR`` holding adam_kernel.cpp, simd.h and module.cpp) with every storage mode, and
compares them with adamkit.kernels.verify (the harness behind ``adamkit check-kernels``:
realistic and garbage inputs, every variant, with and without DAZ/FTZ). Then times both on one
thread, 2^18 elements (L3-resident), kernel call only, calls alternated, min of 300 each.

    python benchmarks/lowprec_kernel_check.py --reference-rev REV [--no-time] [--emulate-avx512]
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from adamkit.kernels import verify

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNEL = ROOT / "src/adamkit/kernels/adam_kernel.cpp"
TIMED = {"bf16 m,v": ((1, 1, 0), 0), "int8 m,v": ((2, 2, 0), 0), "int8 m": ((2, 0, 0), 0),
         "bf16 p,m,v sr": ((1, 1, 1), 1), "bf16 p,m,v nearest": ((1, 1, 1), 0),
         "bf16 p, int8 m,v sr": ((2, 2, 1), 1), "fp32 state (lowprec kernel)": ((0, 0, 0), 0)}


def time_pair(libraries, mode, rounding=0, n=1 << 18, rounds=300):
    """ns per element of each library on its own state, calls alternated, min over rounds."""
    states = []
    for _ in libraries:
        state = verify.make_inputs([n], mode, False, rounding, np.random.default_rng(0), True)
        for key in ("m", "v"):  # int8 state starts at zero, as an optimizer's does
            if state[key + "_absmax"] is not None:
                state[key][...] = 0
                state[key + "_absmax"][...] = 0
        states.append(state)
    scalars = verify.step_scalars(False, 0)
    best = [float("inf")] * len(libraries)
    for round_index in range(rounds + 5):
        for k, (library, state) in enumerate(zip(libraries, states)):
            start = time.perf_counter()
            verify.run_step(library, state, mode, rounding, scalars)
            if round_index >= 5:
                best[k] = min(best[k], time.perf_counter() - start)
    return [t / n * 1e9 for t in best]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-rev", default="HEAD", help="git revision of the reference kernel (default HEAD)")
    parser.add_argument("--reference", help="folder of reference kernel sources (instead of a revision)")
    parser.add_argument("--no-time", action="store_true")
    parser.add_argument("--emulate-avx512", action="store_true",
                        help="build this kernel's AVX-512 path with SIMDe (needs libsimde-dev); implies --no-time")
    args = parser.parse_args()
    reference_source = args.reference
    if reference_source is None:
        folder = pathlib.Path(tempfile.mkdtemp())
        for name in ("adam_kernel.cpp", "simd.h", "module.cpp"):  # the kernel module's sources at that revision
            shown = subprocess.run(["git", "show", f"{args.reference_rev}:src/adamkit/kernels/{name}"],
                                   cwd=ROOT, capture_output=True)
            if shown.returncode == 0:
                (folder / name).write_bytes(shown.stdout)
        reference_source = folder
    reference_source = pathlib.Path(reference_source) / "adam_kernel.cpp"
    if not reference_source.with_name("module.cpp").exists():
        raise SystemExit("the reference has no module.cpp: it predates the kernel module (compare from there on)")
    flags = verify.EMULATE_AVX512_FLAGS if args.emulate_avx512 else ()
    isa = "avx2" if args.emulate_avx512 else "native"
    reference = verify.build_module("native", source=reference_source)
    candidate = verify.build_module(isa, extra_flags=flags, source=KERNEL)
    mismatches = verify.compare_builds(reference, candidate)
    print("mismatches:", mismatches)
    if torch.set_flush_denormal(True):
        int8_modes = [mode for mode in verify.MODES if verify.INT8 in mode[:2]]
        flushed = verify.compare_builds(reference, candidate, int8_modes, seeds=2, flush=True)
        torch.set_flush_denormal(False)
        print("mismatches with DAZ/FTZ:", flushed)
        mismatches += flushed
    if not (args.no_time or args.emulate_avx512):
        for name, (mode, rounding) in TIMED.items():
            old, new = time_pair((reference, candidate), mode, rounding)
            print(f"{name:28s} reference {old:6.3f}  this {new:6.3f} ns/elem  ({old / new:4.2f}x)")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
