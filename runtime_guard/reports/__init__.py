"""Reports: the episode timeline, report files on disk, and their text and HTML renderings.

:mod:`~runtime_guard.reports.timeline` records what happened; :mod:`~runtime_guard.reports.files`
writes reports to ``report_dir``; :mod:`~runtime_guard.reports.view` reads any saved report
defensively into one view that :mod:`~runtime_guard.reports.text`,
:mod:`~runtime_guard.reports.html` and the live :mod:`~runtime_guard.reports.statuspage` render.

Each name is imported on first use: rendering is never loaded by a worker that only
records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime_guard import _lazy

if TYPE_CHECKING:
    from runtime_guard.reports.html import (
        render_html as render_html,
    )
    from runtime_guard.reports.statuspage import (
        render_status_page as render_status_page,
    )
    from runtime_guard.reports.text import (
        render_text as render_text,
    )
    from runtime_guard.reports.timeline import (
        snapshot as snapshot,
    )

_HOMES = {
    "render_html": "html",
    "render_status_page": "statuspage",
    "render_text": "text",
    "snapshot": "timeline",
}

__getattr__, __dir__, __all__ = _lazy.attach(__name__, _HOMES)
