"""The live status page: the guard's in-memory timeline as HTML that reloads itself.

The WSGI and ASGI middleware serve it at ``status_path`` when that option is given (off by
default). The page shows source paths, type names and reports: serve it only to operators
(an internal port, an authenticating proxy, or a path nobody outside can reach). Below the
timeline it lists every live worker of the container (:mod:`runtime_guard.container`).
"""

from __future__ import annotations

import logging
from html import escape
from typing import TYPE_CHECKING, Any

from runtime_guard._units import format_size
from runtime_guard.container import container_view
from runtime_guard.reports.html import render_view
from runtime_guard.reports.timeline import snapshot
from runtime_guard.reports.view import read_view

if TYPE_CHECKING:
    from runtime_guard.guard import Guard

__all__ = ["DEFAULT_REFRESH", "container_section", "render_status_page"]

_log = logging.getLogger("runtime_guard")

DEFAULT_REFRESH = 2.0
"""Seconds between the page's own reloads."""


def render_status_page(guard: Guard, refresh: float = DEFAULT_REFRESH) -> str:
    """Return the live page for ``guard``: timeline, health, latest reports, events, and
    the container's workers.

    Built from memory and the container's shared directory only (no network); costs a copy
    of the history, thinned to :data:`runtime_guard.reports.timeline.MAX_POINTS` points.
    """
    page = render_view(read_view(snapshot(guard), live=True), refresh)
    try:
        workers = container_view(guard).workers
    except Exception:  # the page without the container's part rather than no page
        _log.exception("runtime_guard: could not read the container view")
        return page
    return page.replace("</main>", container_section(workers) + "</main>", 1)


def _cell(worker: dict[str, Any]) -> list[str]:
    fraction = worker.get("usage_fraction")
    rss = worker.get("rss_bytes")
    draining = worker.get("draining")
    state = "stale" if worker.get("stale") else str(worker.get("status", "?"))
    return [
        f"{worker.get('pid')}{' (this page)' if worker.get('this') else ''}",
        state,
        str(worker.get("pressure", "?")),
        f"{fraction:.1%}" if isinstance(fraction, (int, float)) else "?",
        format_size(int(rss)) if isinstance(rss, (int, float)) else "?",
        str(worker.get("suspected_leaks", 0)),
        ", ".join(map(str, worker.get("shed_features") or [])) or "none",
        f"draining: {draining}" if draining else "serving",
    ]


def container_section(workers: list[dict[str, Any]]) -> str:
    """The workers of the container as an HTML table (figures only, escaped)."""
    head = ("pid", "status", "pressure", "usage", "rss", "leaks", "shed", "recycling")
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in _cell(w)) + "</tr>" for w in workers
    )
    if not rows:
        rows = f'<tr><td colspan={len(head)} class="muted">no worker publishes figures</td></tr>'
    header = "".join(f"<th>{h}</th>" for h in head)
    return (
        f'<section id="container"><h2>Workers of this container ({len(workers)})</h2>'
        f'<table id="workers-table"><tr>{header}</tr>{rows}</table></section>'
    )
