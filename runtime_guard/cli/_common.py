"""What every subcommand shares: how it reports an error."""

from __future__ import annotations

import sys

__all__ = ["err"]


def err(message: str) -> None:
    """Print ``runtime-guard: message`` on standard error."""
    sys.stderr.write(f"runtime-guard: {message}\n")
