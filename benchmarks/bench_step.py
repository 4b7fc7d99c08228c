"""Optimizer step benchmark: adamkit vs torch.optim vs the bytes-only floor, side by side.

Each case runs in a fresh process (so one case's memory does not disturb the next):
contestants are interleaved round by round and the median step time is printed with its
ratio to torch's fused AdamW measured in the same run. Uses the same code as `adamkit bench`.

    python benchmarks/bench_step.py --case gpt2 --case gpt2-trainer --case many-small --case tiny --steps 15 --memory
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", default=None)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also measure adamkit's and torch fused's RSS, each in its own process")
    parser.add_argument("--skip", action="append", default=[])
    args = parser.parse_args()
    status = 0
    for case in args.case or ["gpt2", "gpt2-trainer", "many-small", "tiny"]:
        command = [sys.executable, "-m", "adamkit.cli", "bench", "--case", case, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        for name in args.skip:
            command += ["--skip", name]
        if args.memory:
            for subject in ("adamkit", "torch fused"):
                status |= subprocess.call(command[:6] + ["--memory", subject])
        status |= subprocess.call(command)
    return status


if __name__ == "__main__":
    sys.exit(main())
