"""The error an integration raises when its framework is not installed."""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(integration: str, module: str, extra: str) -> ImportError:
    """The error raised when an integration's framework is not installed: names the extra."""
    return ImportError(
        f"runtime_guard.integrations.{integration} needs {module!r}, which is not installed: "
        f"pip install 'runtime-guard-server[{extra}]'"
    )
