"""A low-precision kernel change against a git revision's: the same bits, and what the arithmetic costs.

Builds the revision's kernel sources (``adam_kernel.cpp``, ``module.cpp``, ``simd.h`` as git holds
them) and this tree's with the same flags, for one instruction set and the chosen storage modes,
then (1) compares their outputs byte for byte over realistic and garbage inputs
(``verify.compare_builds``: 0 mismatches means the change kept every bit) and (2) times each
mode's step on an L2-resident bucket (32,768 elements, one thread), the two builds interleaved
round by round and timed by the thread's own CPU time, so other processes on the machine do not
count. In cache this is the arithmetic alone: what a step costs where memory is not the limit
(the fast memory phase). Prints ns per element (least over rounds) and the median per-round ratio.

    python benchmarks/lowprec_vs_revision.py --revision f6331f5 [--isa avx512] [--mode "int4 m,v" ...]

``--revision-isa`` builds the revision for another level than this tree (``--revision HEAD
--revision-isa avx512 --isa avx512bf16``: what one more instruction-set extension changes).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from adamkit.kernels import native_build, verify

from lowprec_arithmetic import MODES as TIMED_MODES  # the modes the other low-precision scripts time (a script beside this one)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("adam_kernel.cpp", "module.cpp", "simd.h")
# name: ((exp_avg, exp_avg_sq, param) formats, rounding): those modes, plus float32 storage (the update
# alone, in the same kernel)
MODES = {
    "fp32": ((verify.F32, verify.F32, verify.F32), 0),
    **{name: (formats, rounding) for name, (formats, rounding, *_) in TIMED_MODES.items()},
}
ELEMENTS = 1 << 15
CALLS = 200  # per round and build


def revision_sources(revision: str, directory: Path) -> Path:
    """The revision's kernel sources written to ``directory``; returns its adam_kernel.cpp."""
    for name in SOURCES:
        text = subprocess.run(["git", "show", f"{revision}:src/adamkit/kernels/{name}"], cwd=ROOT, check=True,
                              capture_output=True).stdout
        (directory / name).write_bytes(text)
    return directory / "adam_kernel.cpp"


def recorded_call(state: dict, mode: tuple[int, int, int], rounding: int) -> tuple:
    """The arguments of one kernel call over ``state`` (built once, so the timing holds no Python set-up)."""

    class Recorder:
        def adam_lowprec_step(self, *args):
            self.args = args

    recorder = Recorder()
    verify.run_step(recorder, state, mode, rounding, verify.step_scalars(False, 0), threads=1)
    return recorder.args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", required=True, help="the git revision to compare with (e.g. a commit before the change)")
    parser.add_argument("--isa", default="avx512", choices=native_build.ISAS)
    parser.add_argument("--revision-isa", choices=native_build.ISAS, help="the revision's level (default: --isa)")
    parser.add_argument("--mode", action="append", choices=list(MODES), help="storage modes (default: all)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3, help="input sets per mode for the bit comparison")
    args = parser.parse_args()
    names = args.mode or list(MODES)
    modes = [MODES[n][0] for n in names]
    with tempfile.TemporaryDirectory(prefix="adamkit-revision-") as scratch:
        revision_isa = args.revision_isa or args.isa
        builds = {args.revision: verify.build_module(revision_isa, modes, source=revision_sources(args.revision, Path(scratch))),
                  "this tree": verify.build_module(args.isa, modes)}
    old, new = builds.values()
    mismatches = verify.compare_builds(old, new, modes, seeds=args.seeds)
    print(f"bits: {mismatches} mismatching outputs between {args.revision} ({revision_isa} build) and this tree "
          f"({args.isa} build), {len(modes)} modes")
    print(f"ns per element, thread CPU time, {ELEMENTS:,} elements in cache, one thread, {args.rounds} rounds")
    for name in names:
        mode, rounding = MODES[name]
        state = verify.make_inputs([ELEMENTS], mode, False, rounding, np.random.default_rng(0), True)
        calls = {label: (build.adam_lowprec_step, recorded_call(state, mode, rounding)) for label, build in builds.items()}
        seconds: dict[str, list[float]] = {label: [] for label in builds}
        for _ in range(args.rounds):
            for label, (step, call_args) in calls.items():
                start = time.thread_time_ns()
                for _ in range(CALLS):
                    step(*call_args)
                seconds[label].append((time.thread_time_ns() - start) / CALLS / ELEMENTS)
        ratio = statistics.median(n / o for o, n in zip(seconds[args.revision], seconds["this tree"]))
        print(f"{name:14s} {args.revision} {min(seconds[args.revision]):.3f}  this tree {min(seconds['this tree']):.3f}  "
              f"(this tree / {args.revision}: {ratio:.3f})")


if __name__ == "__main__":
    main()
