"""``adamkit reproduce [--quick | --paper-scale [--data-dir DIR] [--device DEV]] [--only NAME ...] [--seeds N] [--seed-offset K] [--jobs J] [--out DIR]``."""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

import adamkit

from . import EXPERIMENTS, report

DEFAULT_OUT = "adamkit-report"
# What the experiments and the report import beyond torch and numpy: the `reproduce` extra
# (the module they import -> the package pip installs).
REQUIRED = {
    "matplotlib.figure": "matplotlib",
    "sklearn.datasets": "scikit-learn",
    "scipy.stats": "scipy",
    "mlxtend.data": "mlxtend",
    "jsonschema": "jsonschema",
    "tqdm": "tqdm",
}
INSTALL_EXTRA = "pip install 'adamkit[reproduce]'"
FULL_SEEDS = 8
QUICK_SEEDS = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller problems and two seeds: numbers only, no verdicts (under 3 minutes on 2 cores)")
    parser.add_argument(
        "--only", nargs="+", action="extend", metavar="NAME", default=None,
        help="run only these experiments: " + ", ".join(EXPERIMENTS),
    )
    parser.add_argument("--seeds", type=int, default=None, metavar="N", help=f"seeds per experiment (default {QUICK_SEEDS} with --quick, else {FULL_SEEDS})")
    parser.add_argument("--seed-offset", type=int, default=0, metavar="K", help="use seeds K, K+1, ... (a second run with other seeds checks stability)")
    parser.add_argument("--jobs", type=int, default=None, metavar="J", help="parallel processes (default: the CPUs this process may use)")
    parser.add_argument("--paper-scale", action="store_true",
                        help="the papers' horizons and model sizes for logistic, mlp and cnn (hours to days on a CPU; any torch device)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="with --paper-scale: MNIST and/or CIFAR-10 already on disk in torchvision's layout (never downloaded)")
    parser.add_argument("--device", default="cpu", metavar="DEV", help="with --paper-scale: the torch device to train on (cpu, cuda, mps, ...)")
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


def _missing_package() -> str | None:
    """The first package of the `reproduce` extra that cannot be imported, or None."""
    for module, package in REQUIRED.items():
        try:
            importlib.import_module(module)
        except ImportError as error:  # also a package that is installed but broken (a dependency of its own missing)
            top, name = module.split(".")[0], (error.name or module).split(".")[0]
            return package if name == top else f"{name} (needed by {package})"
    return None


def settings_for(module, args: argparse.Namespace):
    """An experiment's settings: quick, full, or (``--paper-scale``, where the module has them) the paper's."""
    if args.quick:
        return module.Settings.quick()
    if getattr(args, "paper_scale", False) and hasattr(module.Settings, "paper"):
        return module.Settings.paper(data_dir=args.data_dir, device=args.device)
    return module.Settings.full()


def run(args: argparse.Namespace) -> int:
    missing = _missing_package()
    if missing is not None:  # the experiments would fail minutes in, inside worker processes
        print(f"adamkit reproduce: error: missing package {missing}; "
              f"install the reproduce extra with: {INSTALL_EXTRA}", file=sys.stderr)
        return 1
    names = list(dict.fromkeys(args.only)) if args.only else list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"adamkit reproduce: error: unknown experiment(s) for --only: {', '.join(unknown)}; "
              f"valid names: {', '.join(EXPERIMENTS)}", file=sys.stderr)
        return 2
    n_seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else FULL_SEEDS)
    if n_seeds < 1:
        print(f"adamkit reproduce: error: invalid --seeds: {n_seeds} (must be at least 1)", file=sys.stderr)
        return 2
    jobs = args.jobs if args.jobs is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if jobs < 1 or args.seed_offset < 0:
        print(f"adamkit reproduce: error: invalid --jobs {jobs} or --seed-offset {args.seed_offset} (jobs ≥ 1, offset ≥ 0)", file=sys.stderr)
        return 2
    if args.quick and args.paper_scale:
        print("adamkit reproduce: error: --quick and --paper-scale exclude each other", file=sys.stderr)
        return 2
    if args.data_dir is not None and not (os.path.isdir(args.data_dir)):
        print(f"adamkit reproduce: error: --data-dir {args.data_dir!r} is not a directory", file=sys.stderr)
        return 2
    out = Path(args.out)
    problem = _check_out(out)
    if problem is not None:  # fail before any training starts
        print(f"adamkit reproduce: error: cannot write the report to --out {str(out)!r}: {problem}", file=sys.stderr)
        return 2

    from .runner import Progress, Runner

    # One thread per process: on a shared 2-core machine a second OpenMP thread that has to wait for a
    # busy core makes small models up to 10x slower (measured), never faster; the processes are the parallelism.
    torch.set_num_threads(1)
    seeds = list(range(args.seed_offset, args.seed_offset + n_seeds))
    started = datetime.datetime.now().astimezone()
    wall = time.perf_counter()
    results = []
    progress = Progress("adamkit reproduce")
    settings_of = {name: settings_for(EXPERIMENTS[name], args) for name in names}
    try:
        with Runner(jobs, progress.callback) as runner:
            runner.announce(sum(EXPERIMENTS[name].estimated_runs(settings_of[name], n_seeds) for name in names))
            for name in names:
                progress.bar.set_postfix_str(name)
                begin = time.perf_counter()
                result = EXPERIMENTS[name].run(settings_of[name], seeds, runner)
                result.seconds = time.perf_counter() - begin
                for claim in result.claims:  # quick sizes and seed counts show numbers, never verdicts
                    claim.quick = bool(args.quick)
                results.append(result)
    finally:
        progress.close()
    command = "adamkit reproduce" + "".join(
        [" --quick" if args.quick else "", " --paper-scale" if args.paper_scale else "",
         f" --data-dir {shlex.quote(args.data_dir)}" if args.data_dir else "", f" --device {args.device}" if args.device != "cpu" else "",
         f" --only {' '.join(names)}" if args.only else "",
         f" --seeds {n_seeds}", f" --seed-offset {args.seed_offset}" if args.seed_offset else "", f" --out {shlex.quote(str(out))}"]
    )
    meta = {
        "adamkit_version": adamkit.__version__,
        "torch_version": torch.__version__,
        "command": command,
        "quick": bool(args.quick),
        "seeds": seeds,
        "threads": torch.get_num_threads(),
        "jobs": jobs,
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - wall, 2),
    }
    document = report.write_report(out, results, meta)
    width = max(len(c["key"]) for c in document["claims"])
    verdict_width = max(len(c["verdict"]) for c in document["claims"])
    for claim in document["claims"]:
        horizon = f"  [{report.horizon_text(claim)}]" if claim["steps"] is not None else ""
        print(f"{claim['key']:<{width}}  {claim['verdict']:<{verdict_width}}  {'; '.join(i['text'] for i in claim['intervals'])}{horizon}")
    print(report.totals_text(document))
    print(f"report: {os.path.join(str(out), 'index.html')} ({meta['wall_seconds']:.0f} s)")
    return 0
