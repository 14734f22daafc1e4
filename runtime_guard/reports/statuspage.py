"""The live status page: the guard's in-memory timeline as HTML that reloads itself.

The WSGI and ASGI middleware serve it at ``status_path`` when that option is given (off by
default). The page shows source paths, type names and reports: serve it only to operators
(an internal port, an authenticating proxy, or a path nobody outside can reach).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime_guard.reports.html import render_view
from runtime_guard.reports.timeline import snapshot
from runtime_guard.reports.view import read_view

if TYPE_CHECKING:
    from runtime_guard.guard import Guard

__all__ = ["DEFAULT_REFRESH", "render_status_page"]

DEFAULT_REFRESH = 2.0
"""Seconds between the page's own reloads."""


def render_status_page(guard: Guard, refresh: float = DEFAULT_REFRESH) -> str:
    """Return the live page for ``guard``: timeline, health, latest reports, events.

    Built from memory only (no file, no network); costs a copy of the history, thinned to
    :data:`runtime_guard.reports.timeline.MAX_POINTS` points.
    """
    return render_view(read_view(snapshot(guard), live=True), refresh)
