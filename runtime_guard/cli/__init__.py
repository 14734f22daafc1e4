"""The ``runtime-guard`` command (also ``python -m runtime_guard``): one module a subcommand."""

from runtime_guard.cli.main import main

__all__ = ["main"]
