"""Time the plain (fp32) kernel of this tree against the one at a git revision, on adamkit's own tables.

Builds src/adamkit/kernels/adam_kernel.cpp as it is and as it was at ``--reference-rev`` (same
compiler flags as kernels/build.py), steps a bench case's parameters once with adamkit.AdamW to
get its pointer tables (torch's layout: every tensor where torch allocated it), then calls both
kernels and the bytes-only floor (flat buffers of the same total size) round by round, both
threads, kernel call only. Prints the median of each and its ratio to the floor. Both kernels
step the same state, so the values drift; only the time is compared (bits: tests and
``adamkit check-kernels``).

    PYTHONPATH=src python benchmarks/kernel_side_by_side.py --case gpt2 --reference-rev 3e2d5e5
"""

from __future__ import annotations

import argparse
import ctypes
import pathlib
import statistics
import subprocess
import tempfile
import time

import torch

import adamkit
from adamkit import bench, kernels
from adamkit.kernels import build

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNEL = ROOT / "src/adamkit/kernels/adam_kernel.cpp"


def compile_library(source: pathlib.Path, directory: pathlib.Path, name: str) -> ctypes.CDLL:
    target = directory / f"{name}.so"
    flags = [*build.FLAGS, "-mprefer-vector-width=512", f"-I{KERNEL.parent}"]
    subprocess.run([build._compiler(), str(source), *flags, "-o", str(target)], check=True)
    library = ctypes.CDLL(str(target))
    library.adam_multi_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int]
    return library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="gpt2", choices=sorted(bench.CASES))
    parser.add_argument("--reference-rev", default="3e2d5e5", help="git revision of the reference kernel")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        folder = pathlib.Path(directory)
        reference_source = folder / "reference.cpp"
        shown = subprocess.run(["git", "show", f"{args.reference_rev}:src/adamkit/kernels/adam_kernel.cpp"],
                               cwd=ROOT, check=True, capture_output=True)  # fmt: skip
        reference_source.write_bytes(shown.stdout)
        libraries = {
            f"kernel at {args.reference_rev}": compile_library(reference_source, folder, "reference"),
            "this tree's kernel": compile_library(KERNEL, folder, "current"),
        }
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
        table, scalars = captured["args"]
        threads = torch.get_num_threads()
        total = sum(p.numel() for p in params)
        flat = [torch.zeros(total) for _ in range(4)]
        steps = {name: (lambda lib=lib: lib.adam_multi_step(ctypes.byref(table), scalars, 0, threads)) for name, lib in libraries.items()}
        steps["bytes-only floor"] = lambda: kernels.floor_flat_(*flat)
        times: dict[str, list[float]] = {name: [] for name in steps}
        for round_index in range(args.warmup + args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                if round_index >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    floor = statistics.median(times["bytes-only floor"])
    print(f"case {args.case}, {threads} threads, kernel call only, median of {args.rounds}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28}{median * 1e3:10.3f} ms{median / floor:8.3f} x floor")


if __name__ == "__main__":
    main()
