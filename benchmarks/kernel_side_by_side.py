"""The fp32 kernel call alone, side by side: each shipped build (AVX-512, AVX2, baseline) with and
without software prefetch, a git revision's kernel if asked, and the bytes-only floor.

Steps a bench case's parameters once with adamkit.AdamW to get its tables (torch's layout: every
tensor where torch allocated it), then calls every contestant back to back in each round, both
threads, kernel call only. Two floors: flat buffers of the same total size, and the same passes
over the step's own tensors (the same pages and thread ranges as the kernel). The machine's memory
speed changes in phases lasting seconds, so the summary is the median over rounds of each round's
ratio to the first contestant and to the floors, not a ratio of medians (adamkit.bench.format_table,
which also gives each memory phase's ratios when the rounds fall into two). All contestants step the same state, so the values drift;
only the time is compared (bits: benchmarks/kernel_bits_vs_revision.py, ``adamkit check-kernels``).

    python benchmarks/kernel_side_by_side.py --case gpt2 [--reference-rev 3e2d5e5]
"""

from __future__ import annotations

import argparse
import ctypes
import pathlib
import subprocess
import tempfile

import torch

import adamkit
from adamkit import bench, kernels, memory
from adamkit.kernels import native, verify

ROOT = pathlib.Path(__file__).resolve().parent.parent


def revision_library(revision: str, directory: pathlib.Path) -> ctypes.CDLL:
    """A revision's kernel built as it was then (a shared library with a C ABI, -march=native)."""
    for name in ("adam_kernel.cpp", "simd.h"):
        shown = subprocess.run(["git", "show", f"{revision}:src/adamkit/kernels/{name}"], cwd=ROOT, capture_output=True)
        if shown.returncode == 0:
            (directory / name).write_bytes(shown.stdout)
    target = directory / "reference.so"
    subprocess.run(["g++", str(directory / "adam_kernel.cpp"), "-O3", "-march=native", "-fopenmp", "-fno-math-errno",
                    "-fno-trapping-math", "-fPIC", "-shared", "-std=c++17", "-mprefer-vector-width=512", "-o", str(target)],
                   check=True)  # fmt: skip
    library = ctypes.CDLL(str(target))
    library.adam_multi_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int]
    return library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="gpt2", choices=sorted(bench.CASES))
    parser.add_argument("--reference-rev", help="also time the kernel of this git revision")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    params = bench.make_params(bench.CASES[args.case]())
    optimizer = adamkit.AdamW(params, lr=1e-3, weight_decay=1e-2)
    optimizer.step()  # creates the state
    captured = {}
    original = kernels.adam_multi_step
    kernels.adam_multi_step = lambda table, scalars, dtype: (captured.update(args=(table, scalars)), original(table, scalars, dtype))
    try:
        optimizer.step()
    finally:
        kernels.adam_multi_step = original
    t, scalars = captured["args"]
    threads = torch.get_num_threads()
    steps = {}
    for isa in native.supported_isas():
        module = verify.shipped(isa)
        if module is None:
            continue
        for prefetch in (True, False):
            steps[f"{isa}, prefetch {'on' if prefetch else 'off'}"] = (
                lambda module=module, prefetch=prefetch: module.adam_multi_step(
                    t.p, t.g, t.m, t.v, t.vmax, t.prefix, t.scalar_index, t.count, scalars, 0, threads, prefetch))
    with tempfile.TemporaryDirectory() as directory:
        if args.reference_rev:
            library = revision_library(args.reference_rev, pathlib.Path(directory))

            class Table(ctypes.Structure):  # AdamTensorTable of the revision
                _fields_ = [(n, ctypes.c_void_p) for n in ("p", "g", "m", "v", "vmax", "prefix", "scalar_index")] + [("count", ctypes.c_int64)]

            class Scalars(ctypes.Structure):  # AdamScalars of the revision
                _fields_ = [(n, ctypes.c_double) for n in ("beta1", "beta2", "eps", "l2", "decay", "step_size",
                                                            "bias_correction2_sqrt", "grad_scale")] + [
                    ("maximize", ctypes.c_int32), ("amsgrad", ctypes.c_int32)]

            address = lambda a: None if a is None else a.__array_interface__["data"][0]  # noqa: E731
            table = Table(*(address(a) for a in (t.p, t.g, t.m, t.v, t.vmax, t.prefix, t.scalar_index)), t.count)
            s = scalars[0]
            packed = Scalars(s.beta1, s.beta2, s.eps, s.l2, s.decay, s.step_size, s.bias_correction2_sqrt, s.grad_scale,
                             int(s.maximize), int(s.amsgrad))
            steps[f"kernel at {args.reference_rev}"] = lambda: library.adam_multi_step(ctypes.byref(table), ctypes.byref(packed), 0, threads)
        total = sum(p.numel() for p in params)
        flat = [torch.zeros(total) for _ in range(4)]
        steps["bytes-only floor"] = lambda: kernels.floor_flat_(*flat)
        # the same bytes on the step's own tensors (torch's allocations, the kernel's ranges)
        steps["floor on these tensors"] = lambda: kernels.module().floor_tables(t.p, t.g, t.m, t.v, t.prefix, t.count, threads)
        times = bench.time_interleaved([bench.Contestant(name, step) for name, step in steps.items()], args.rounds, args.warmup)
    print(f"{threads} threads, kernel call only; CPU: {native.cpu_vendor()}, THP mode {memory.thp_mode()}")
    print(bench.format_table(args.case, times, reference=next(iter(times)), floors=("bytes-only floor", "floor on these tensors")))

if __name__ == "__main__":
    main()
