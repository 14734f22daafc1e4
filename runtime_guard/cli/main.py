"""The ``runtime-guard`` command (also ``python -m runtime_guard``): the parser and dispatch.

Each subcommand is a module of this package with ``register(subparsers)`` and
``command(args) -> exit code``:

``run [options] -- CMD...``
    Run a Python program with the guard installed at its start-up, no code change.
``demo [--quick | --duration S]``
    Start a leaking web app under the guard and watch it live.
``report FILE.json [--html OUT.html]``
    Render a saved report as text, or as a self-contained HTML page.
``status URL``
    Print a running server's health; exit 0 ok, 1 degraded, 2 critical, 3 unknown.
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
from collections.abc import Sequence

from runtime_guard._version import __version__

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = ("run", "demo", "report", "status")
"""The subcommands, each a module ``runtime_guard.cli.<name>``, in the order of ``--help``."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="runtime-guard", description="In-process memory guard for Python servers."
    )
    parser.add_argument("--version", action="version", version=f"runtime-guard {__version__}")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"runtime_guard.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    for stream in (sys.stdout, sys.stderr):
        # Charts and paths may hold characters a non-UTF-8 terminal cannot show: replace
        # them rather than fail half-way through a report.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command_name is None:
        parser.print_help()
        return 2
    code: int = importlib.import_module(f"runtime_guard.cli.{args.command_name}").command(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
