"""``adamkit reproduce [--quick] [--only NAME ...] [--seeds N] [--out DIR]``."""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

import adamkit

from . import EXPERIMENTS, report
from .common import Bar

DEFAULT_OUT = "adamkit-report"
FULL_SEEDS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller problems and one seed (a few minutes on 2 cores)")
    parser.add_argument(
        "--only", nargs="+", action="extend", metavar="NAME", default=None,
        help="run only these experiments: " + ", ".join(EXPERIMENTS),
    )
    parser.add_argument("--seeds", type=int, default=None, metavar="N", help=f"seeds per experiment (default 1 with --quick, else {FULL_SEEDS})")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"report directory (default ./{DEFAULT_OUT}/)")


def _check_out(out: Path) -> str | None:
    """None if ``out`` can be created and written to, else the reason it cannot."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".adamkit-write-check-"):
            pass
    except OSError as error:
        return f"{error.strerror or error} ({error.filename or out})"
    return None


def run(args: argparse.Namespace) -> int:
    names = list(dict.fromkeys(args.only)) if args.only else list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"adamkit reproduce: error: unknown experiment(s) for --only: {', '.join(unknown)}; "
              f"valid names: {', '.join(EXPERIMENTS)}", file=sys.stderr)
        return 2
    n_seeds = args.seeds if args.seeds is not None else (1 if args.quick else FULL_SEEDS)
    if n_seeds < 1:
        print(f"adamkit reproduce: error: invalid --seeds: {n_seeds} (must be at least 1)", file=sys.stderr)
        return 2
    out = Path(args.out)
    problem = _check_out(out)
    if problem is not None:  # fail before any training starts
        print(f"adamkit reproduce: error: cannot write the report to --out {str(out)!r}: {problem}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    # One thread: on a shared 2-core machine a second OpenMP thread that has to wait for a
    # busy core makes small models up to 10x slower (measured), never faster.
    torch.set_num_threads(1)
    seeds = list(range(n_seeds))
    started = datetime.datetime.now().astimezone()
    wall = time.perf_counter()
    results = []
    for name in names:
        module = EXPERIMENTS[name]
        settings = module.Settings.quick() if args.quick else module.Settings.full()
        total = module.total_work(settings, n_seeds)
        with tqdm(total=total, desc=f"{name:<14}", unit="step", file=sys.stderr, dynamic_ncols=True,
                  mininterval=0.5, disable=None) as bar:
            begin = time.perf_counter()
            result = module.run(settings, seeds, Bar(bar.update))
            result.seconds = time.perf_counter() - begin
            bar.update(max(0, total - bar.n))
        results.append(result)
    command = "adamkit reproduce" + "".join(
        [" --quick" if args.quick else "", f" --only {' '.join(names)}" if args.only else "",
         f" --seeds {n_seeds}", f" --out {shlex.quote(str(out))}"]
    )
    meta = {
        "adamkit_version": adamkit.__version__,
        "torch_version": torch.__version__,
        "command": command,
        "quick": bool(args.quick),
        "seeds": seeds,
        "threads": torch.get_num_threads(),
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - wall, 2),
    }
    document = report.write_report(out, results, meta)
    width = max(len(c["statement"]) for c in document["claims"])
    for claim in document["claims"]:
        print(f"{claim['statement']:<{width}}  {claim['verdict']}")
    print(f"report: {os.path.join(str(out), 'index.html')} ({meta['wall_seconds']:.0f} s)")
    return 0
