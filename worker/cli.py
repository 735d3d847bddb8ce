"""The ``rtml-worker`` command line: one subcommand per module, registered from ``COMMANDS``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from worker import __version__
from worker.errors import ConfigError

# Each module defines ``register(subparsers)`` that adds its subcommand(s) and sets ``func`` on them;
# ``func(args) -> int`` is the exit code. Imported lazily so `rtml-worker --help` stays fast.
COMMANDS: tuple[str, ...] = (
    "worker.models.cli",
    "worker.graph_cli",
    "worker.scoring.cli",
    "worker.runtime.cli",
    "worker.deploy.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtml-worker", description="A streaming scoring worker for real-time ML on Kafka."
    )
    parser.add_argument("--version", action="version", version=f"rtml-worker {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"rtml-worker: error: {exc}", file=sys.stderr)
        return 2
    return code
