"""Which guard this process runs: one global, set by ``install()``, read on every request.

A leaf module: the middleware, the metrics and the integrations ask it for the current
guard without importing what installs one (and all the components that come with it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime_guard.guard import Guard

__all__ = ["get_guard"]

guard: Guard | None = None
"""The installed guard, or ``None``. Hot paths read this global directly: no call."""


def get_guard() -> Guard | None:
    """Return the process-wide guard, or ``None`` before :func:`runtime_guard.install`."""
    return guard
