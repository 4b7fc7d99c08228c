"""The ``adamkit`` command line: ``adamkit bench``, ``adamkit reproduce`` and ``adamkit check-kernels``."""

from __future__ import annotations

import argparse
import sys


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    return bench.main(args)


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import cli as reproduce_cli

    return reproduce_cli.run(args)


def _check_kernels(args: argparse.Namespace) -> int:
    from .kernels import verify

    return verify.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adamkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    from . import bench

    bench_parser = commands.add_parser("bench", help="time one optimizer step: adamkit vs torch.optim")
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=_bench)

    from .reproduce import cli as reproduce_cli

    reproduce_parser = commands.add_parser(
        "reproduce", help="run the papers' experiments and write a report with a verdict per claim"
    )
    reproduce_cli.add_arguments(reproduce_parser)
    reproduce_parser.set_defaults(handler=_reproduce)

    from .kernels import verify

    check_parser = commands.add_parser(
        "check-kernels", help="check the compiled low-precision kernel's vector path against its scalar code, bit for bit"
    )
    verify.add_arguments(check_parser)
    check_parser.set_defaults(handler=_check_kernels)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
