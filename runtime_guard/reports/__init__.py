"""Reports: the episode timeline, report files on disk, and their text and HTML renderings.

:mod:`~runtime_guard.reports.timeline` records what happened; :mod:`~runtime_guard.reports.files`
writes reports to ``report_dir``; :mod:`~runtime_guard.reports.view` reads any saved report
defensively into one view that :mod:`~runtime_guard.reports.text`,
:mod:`~runtime_guard.reports.html` and the live :mod:`~runtime_guard.reports.statuspage` render.
"""

from runtime_guard.reports.html import render_html
from runtime_guard.reports.statuspage import render_status_page
from runtime_guard.reports.text import render_text
from runtime_guard.reports.timeline import snapshot

__all__ = ["render_html", "render_status_page", "render_text", "snapshot"]
