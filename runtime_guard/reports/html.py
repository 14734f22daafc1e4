"""A report as one self-contained HTML page: inline SVG charts, inline CSS, no script.

The page loads nothing from anywhere (its Content-Security-Policy forbids it), so it opens
from a file on a machine without a network, and from an e-mail attachment. Every string
from the report is escaped; report data is never trusted.
"""

from __future__ import annotations

import base64
import time
from html import escape
from typing import Any

from runtime_guard.pressure import LEVELS
from runtime_guard.reports.view import (
    ClientRow,
    Event,
    LeakView,
    Point,
    ReportView,
    ResourcesView,
    UnreleasedView,
    fmt_bytes,
    read_view,
)

__all__ = ["render_html", "render_view"]

_W, _H = 960, 356
_LEFT, _RIGHT, _TOP, _BOTTOM = 78, 16, 66, 34
_MARKER_ROWS = 3

_BAND_COLORS = {1: "#f5d76e", 2: "#f39c4a", 3: "#e0473c"}
_MARKERS: dict[str, tuple[str, str, str]] = {
    # kind: (colour, glyph, legend)
    "leak": ("#8e44ad", "L", "leak suspected"),
    "unreleased": ("#16a085", "U", "unreleased objects"),
    "relief": ("#2e86de", "R", "relief (GC, trim)"),
    "shed": ("#d35400", "S", "feature shed"),
    "restore": ("#27ae60", "+", "feature restored"),
    "recycle": ("#c0392b", "⟳", "recycle requested"),
    "pool": ("#6c5ce7", "P", "connection held / pool exhausted"),
    "stuck": ("#b33939", "!", "work stuck"),
    "loop": ("#e17055", "E", "event loop blocked"),
    "growth": ("#0984e3", "G", "threads, tasks or fds piling up"),
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}header p{margin:4px 0 0;color:#c8cdd8}
main{padding:8px 24px 32px;max-width:1100px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:12px 16px;
margin:14px 0}
h2{font-size:16px;margin:0 0 8px}h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f4;vertical-align:top}
th{color:#5a6274;font-weight:600}
.kv th{width:30%}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre{background:#f3f4f7;padding:8px;overflow-x:auto;margin:4px 0}
.status{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;
background:#dfe6ee;color:#1d2330}
.status.ok{background:#d4f1dd}.status.degraded,.status.elevated{background:#fde8c8}
.status.high{background:#f9d2a8}.status.critical{background:#f8d0cc}
.holder{font-weight:600}img.graph{max-width:100%;display:block;margin:6px 0}
.bar{background:#8e44ad;height:8px;border-radius:4px;min-width:2px}
.legend span{display:inline-block;margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;
vertical-align:-2px}
.muted{color:#6b7385}.note{background:#fff7e0;border-left:3px solid #f0b429;padding:6px 10px}
summary{cursor:pointer;color:#2e5aa8}
"""


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _clock(wall: float, tenths: bool = False) -> str:
    text = time.strftime("%H:%M:%S", time.gmtime(wall))
    return f"{text}.{int(wall * 10) % 10}" if tenths else text


def _stamp(wall: float | None) -> str:
    if wall is None:
        return "unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def _kv_table(rows: list[tuple[str, str]], table_id: str) -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv" id="{table_id}">{body}</table>'


def _chart(view: ReportView) -> str:
    points = view.points
    if not points:
        return '<p class="muted">No samples in this report: nothing to chart.</p>'
    t0, t1 = points[0].wall, points[-1].wall
    if t1 - t0 < 1e-6:
        t0, t1 = t0 - 1, t1 + 1
    top_usage = max(max(p.usage, p.rss or 0) for p in points)
    limits = [p.limit for p in points if p.limit]
    limit_on_chart = bool(limits) and max(limits) <= 4 * max(top_usage, 1)
    y_max = max(top_usage, max(limits) if limit_on_chart else 0) * 1.08 or 1.0
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(wall: float) -> float:
        return _LEFT + (wall - t0) / (t1 - t0) * plot_w

    def y(value: float) -> float:
        return _TOP + plot_h - min(value, y_max) / y_max * plot_h

    parts: list[str] = [
        f'<svg id="timeline-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" '
        f'width="100%" role="img" aria-label="memory usage and limit over time">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fbfcfd" '
        'stroke="#dde1e8"/>',
    ]
    parts.extend(_bands(points, x, plot_h))
    for i in range(5):
        value = y_max * i / 4
        yy = y(value)
        parts.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eef0f4"/>'
            f'<text x="{_LEFT - 6}" y="{yy + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#5a6274">{escape(fmt_bytes(value))}</text>'
        )
    for i in range(5):
        wall = t0 + (t1 - t0) * i / 4
        anchor = ("start", "middle", "middle", "middle", "end")[i]
        parts.append(
            f'<text x="{x(wall):.1f}" y="{_H - 12}" font-size="11" text-anchor="{anchor}" '
            f'fill="#5a6274">{_clock(wall, t1 - t0 < 20)}</text>'
        )
    if limit_on_chart:
        limit = limits[-1]
        for name, fraction in view.thresholds.items():
            yy = y(limit * fraction)
            parts.append(
                f'<line class="threshold" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{yy:.1f}" '
                f'y2="{yy:.1f}" stroke="#b0b6c3" stroke-dasharray="2 4"/>'
                f'<text x="{_W - _RIGHT - 4}" y="{yy - 3:.1f}" font-size="10" text-anchor="end" '
                f'fill="#8a91a2">{escape(name)}</text>'
            )
        parts.append(
            _polyline(
                "limit-line", values=[(p.wall, p.limit) for p in points], x=x, y=y, color="#c0392b"
            )
        )
    else:
        text = (
            f"limit {fmt_bytes(limits[-1])}, far above usage: off the chart"
            if limits
            else "limit unknown"
        )
        parts.append(
            f'<text x="{_W - _RIGHT - 6}" y="{_TOP + 14}" font-size="11" text-anchor="end" '
            f'fill="#c0392b">{escape(text)}</text>'
        )
    if any(p.rss is not None and abs(p.rss - p.usage) > 0.01 * p.usage for p in points):
        parts.append(
            _polyline(
                "rss-line",
                values=[(p.wall, p.rss) for p in points],
                x=x,
                y=y,
                color="#7f8c8d",
                width=1,
                dash="4 3",
            )
        )
    parts.append(
        _polyline(
            "usage-line", values=[(p.wall, p.usage) for p in points], x=x, y=y, color="#1f5fbf"
        )
    )
    parts.extend(_markers(view.events, t0, t1, x))
    parts.append("</svg>")
    return "".join(parts) + _legend()


def _polyline(
    css_id: str,
    *,
    values: list[tuple[float, float | None]],
    x: Any,
    y: Any,
    color: str,
    width: float = 2,
    dash: str = "",
) -> str:
    coords = " ".join(f"{x(w):.1f},{y(v):.1f}" for w, v in values if v is not None)
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<polyline id="{css_id}" fill="none" stroke="{color}" stroke-width="{width}"'
        f'{dashed} points="{coords}"/>'
    )


def _bands(points: list[Point], x: Any, plot_h: float) -> list[str]:
    bands = []
    start = 0
    for i in range(1, len(points) + 1):
        if i < len(points) and points[i].level == points[start].level:
            continue
        level = points[start].level
        if level > 0:
            end = points[min(i, len(points) - 1)].wall
            x0, x1 = x(points[start].wall), x(end)
            bands.append(
                f'<rect class="band {LEVELS[level]}" x="{x0:.1f}" y="{_TOP}" '
                f'width="{max(x1 - x0, 1.5):.1f}" height="{plot_h}" '
                f'fill="{_BAND_COLORS[level]}" fill-opacity="0.28">'
                f"<title>{LEVELS[level].upper()} from {_clock(points[start].wall)}</title></rect>"
            )
        start = i
    return bands


def _markers(events: list[Event], t0: float, t1: float, x: Any) -> list[str]:
    parts = []
    # Markers close in time are stacked in rows above the plot so each stays readable.
    row_ends = [-1e9] * _MARKER_ROWS
    for event in events:
        if event.kind not in _MARKERS or not t0 <= event.wall <= t1:
            continue
        color, glyph, _ = _MARKERS[event.kind]
        xx = x(event.wall)
        row = next((r for r, end in enumerate(row_ends) if xx - end >= 17), _MARKER_ROWS - 1)
        row_ends[row] = xx
        cy = _TOP - 10 - row * 18
        title = f"{_clock(event.wall)} {event.label}"
        parts.append(
            f'<g class="marker {event.kind}"><title>{escape(title)}</title>'
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{cy + 8}" y2="{_H - _BOTTOM}" '
            f'stroke="{color}" stroke-width="1.2" stroke-dasharray="3 3"/>'
            f'<circle cx="{xx:.1f}" cy="{cy}" r="8" fill="{color}"/>'
            f'<text x="{xx:.1f}" y="{cy + 4}" font-size="11" font-weight="700" '
            f'text-anchor="middle" fill="#fff">{escape(glyph)}</text></g>'
        )
    return parts


def _legend() -> str:
    items = [
        '<span><i style="background:#1f5fbf"></i>usage</span>',
        '<span><i style="background:#c0392b"></i>limit</span>',
        '<span><i style="background:#7f8c8d"></i>RSS (when it differs)</span>',
    ]
    items += [
        f'<span><i style="background:{color};opacity:.5"></i>{LEVELS[level]}</span>'
        for level, color in _BAND_COLORS.items()
    ]
    items += [
        f'<span><i style="background:{color}"></i>{escape(glyph)} {escape(text)}</span>'
        for color, glyph, text in _MARKERS.values()
    ]
    return f'<p class="legend">{"".join(items)}</p>'


def _events_section(events: list[Event]) -> str:
    if not events:
        return ""
    rows = "".join(
        f"<tr><td class=num>{_clock(e.wall)}</td><td>{escape(e.kind)}</td>"
        f"<td>{escape(e.label)}</td></tr>"
        for e in events[-200:]
    )
    return (
        '<section id="events"><h2>Events</h2><table><tr><th>time (UTC)</th><th>kind</th>'
        f"<th>what</th></tr>{rows}</table></section>"
    )


def _details(summary: str, lines: list[str]) -> str:
    """Folded frames: shown on a click, so long tracebacks do not swamp the tables."""
    if not lines:
        return ""
    body = escape("\n".join(lines))
    return f"<details><summary>{summary}</summary><pre>{body}</pre></details>"


def _chain_graph(chain: list[str], css_id: str) -> str:
    """The referrer chain as boxes joined by arrows, root at the top."""
    if not chain:
        return '<p class="muted">No holder was found within the search budget.</p>'
    box_h, gap = 26, 18
    labels = [c if len(c) <= 110 else c[:109] + "…" for c in chain]
    width = min(900, max(8 * max(len(label) for label in labels) + 24, 200))
    height = len(labels) * (box_h + gap) - gap + 4
    parts = [
        f'<svg id="{css_id}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="referrer chain from a module global to the leaking object">'
    ]
    for i, label in enumerate(labels):
        top = 2 + i * (box_h + gap)
        fill = "#efe6f5" if i == len(labels) - 1 else "#eef3fb"
        parts.append(
            f'<rect class="chain-node" x="2" y="{top}" width="{width - 4}" height="{box_h}" '
            f'rx="4" fill="{fill}" stroke="#8e9bb5"/>'
            f'<text x="10" y="{top + 17}" font-size="12" font-family="ui-monospace,monospace" '
            f'fill="#1d2330">{escape(label)}</text>'
        )
        if i:
            mid = 30
            parts.append(
                f'<path d="M{mid} {top - gap + 1} L{mid} {top - 4} M{mid - 4} {top - 8} '
                f'L{mid} {top - 2} L{mid + 4} {top - 8}" stroke="#5a6274" fill="none"/>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _graph_image(svg: str, css_id: str) -> str:
    """Graphviz's SVG as an image: an SVG in ``<img>`` runs no script and loads nothing, so
    a report's picture cannot act on the page even if the file was tampered with."""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (
        f'<img id="{css_id}" class="graph" alt="reference chain from the root to the leaked '
        f'object" src="data:image/svg+xml;base64,{data}">'
    )


def _routes_table(leak: LeakView, suffix: str) -> str:
    if not leak.routes:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape(row.route)}</code></td><td class=num>{escape(row.per_request)}"
        f"</td><td class=num>{escape(row.requests)}</td><td class=num>{row.share:.0%}</td>"
        f'<td><div class="bar" style="width:{row.share * 100:.0f}%"></div></td>'
        f"<td class=muted>{escape(row.method)}</td></tr>"
        for row in leak.routes
    )
    return (
        f'<h3>Routes, by what each request leaves allocated</h3><table id="routes{suffix}">'
        "<tr><th>route</th><th class=num>per request</th><th class=num>requests</th>"
        f"<th class=num>share</th><th style='width:20%'></th><th>from</th></tr>{rows}</table>"
    )


def _leak_section(leak: LeakView, index: int = 0, count: int = 1) -> str:
    suffix = "" if index == 0 else f"-{index}"
    if index == 0:
        title = "Leak" if count == 1 else f"Leak (the most useful of {count} reports)"
    else:
        title = f"Other leak report {index}"
    parts = [f'<section id="leak{suffix}" class="leak"><h2>{title}</h2>']
    if leak.summary:
        parts.append(_kv_table(leak.summary, "leak-summary" + suffix))
    if leak.note:
        parts.append(f'<p class="note">{escape(leak.note)}</p>')
    parts.append(f'<h3>Top allocation sites</h3><table id="allocation-sites{suffix}">')
    parts.append(
        "<tr><th>site</th><th>function</th><th class=num>growth</th><th class=num>blocks</th></tr>"
    )
    for site in leak.sites:
        trace = _details("traceback", site.traceback)
        parts.append(
            f"<tr><td><code>{escape(site.location)}</code>{trace}</td>"
            f"<td><code>{escape(site.function)}</code></td>"
            f"<td class=num>{escape(site.size)}</td><td class=num>{escape(site.count)}</td></tr>"
        )
    if not leak.sites:
        parts.append('<tr><td colspan=4 class="muted">no allocation sites recorded</td></tr>')
    parts.append("</table><h3>Who holds it</h3>")
    if leak.holder:
        parts.append(
            f'<p id="holder{suffix}" class="holder"><code>{escape(leak.holder)}</code></p>'
        )
    if leak.holder_svg:
        parts.append(_graph_image(leak.holder_svg, "referrer-graph" + suffix))
        parts.append(_details("the chain as text", [" -> ".join(leak.chain)]))
    else:
        parts.append(_chain_graph(leak.chain, "referrer-chain" + suffix))
    parts.append(_routes_table(leak, suffix))
    if leak.types:
        parts.append(f'<h3>Growing types</h3><table id="growing-types{suffix}">')
        parts.append(
            "<tr><th>type</th><th class=num>before</th><th class=num>after</th>"
            "<th class=num>growth</th><th style='width:30%'></th></tr>"
        )
        top = max((abs(t.growth) for t in leak.types), default=1) or 1
        for row in leak.types:
            pct = abs(row.growth) / top * 100
            parts.append(
                f"<tr><td><code>{escape(row.name)}</code></td>"
                f"<td class=num>{escape(row.before)}</td>"
                f"<td class=num>{escape(row.after)}</td><td class=num>{row.growth:+,.0f}</td>"
                f'<td><div class="bar" style="width:{pct:.0f}%"></div></td></tr>'
            )
        parts.append("</table>")
    parts.append("</section>")
    return "".join(parts)


def _client_row(row: ClientRow) -> str:
    stack = _details("stack", row.stack)
    return (
        f"<tr><td><code>{escape(row.type_name)}</code></td><td><code>{escape(row.site)}</code>"
        f"{stack}</td><td class=num>{escape(row.count)}</td><td>{escape(row.detail)}</td></tr>"
    )


def _unreleased_section(view: UnreleasedView) -> str:
    parts = ['<section id="unreleased"><h2>Unreleased clients</h2>']
    if view.summary:
        parts.append(_kv_table(view.summary, "unreleased-summary"))
    if view.types:
        parts.append(
            '<h3>By type</h3><table id="unreleased-types"><tr><th>type</th><th class=num>live'
            "</th><th class=num>unreleased</th><th class=num>collected unreleased</th></tr>"
        )
        parts.extend(
            f"<tr><td><code>{escape(name)}</code></td><td class=num>{escape(live)}</td>"
            f"<td class=num>{escape(unrel)}</td><td class=num>{escape(coll)}</td></tr>"
            for name, live, unrel, coll in view.types
        )
        parts.append("</table>")
    parts.append(
        '<h3>By creation site</h3><table id="unreleased-sites"><tr><th>type</th><th>site</th>'
        "<th class=num>count</th><th></th></tr>"
    )
    parts.extend(_client_row(row) for row in view.sites)
    if not view.sites:
        parts.append('<tr><td colspan=4 class="muted">no creation sites recorded</td></tr>')
    parts.append("</table></section>")
    return "".join(parts)


def _resources_section(view: ResourcesView) -> str:
    parts = ['<section id="resources"><h2>Pools, threads, tasks and stuck work</h2>']
    if view.summary:
        parts.append(_kv_table(view.summary, "resources-summary"))
    if view.pools:
        parts.append(
            '<h3>Pools</h3><table id="pools"><tr><th>pool</th><th class=num>in use</th>'
            "<th class=num>waiting</th><th class=num>held too long</th>"
            "<th class=num>oldest checkout</th></tr>"
        )
        parts.extend(
            f"<tr><td><code>{escape(name)}</code></td><td class=num>{escape(in_use)}</td>"
            f"<td class=num>{escape(waiting)}</td><td class=num>{escape(held)}</td>"
            f"<td class=num>{escape(oldest)}</td></tr>"
            for name, in_use, waiting, held, oldest in view.pools
        )
        parts.append("</table>")
    if view.reports:
        parts.append(
            '<h3>Reports</h3><table id="resource-reports"><tr><th>kind</th><th>where</th>'
            "<th class=num></th><th>what</th></tr>"
        )
        parts.extend(_client_row(row) for row in reversed(view.reports))
        parts.append("</table>")
    parts.append("</section>")
    return "".join(parts)


def render_view(view: ReportView, refresh: float | None = None) -> str:
    """Render a checked :class:`ReportView`; ``refresh`` seconds makes the page reload itself."""
    head = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
    ]
    if refresh is not None:
        head.append(f'<meta http-equiv="refresh" content="{max(1, round(refresh))}">')
    head.append(f"<title>{escape(view.title)} · runtime_guard</title><style>{_CSS}</style>")
    status = ""
    if view.status:
        status = f' <span class="status {_attr(view.status)}">{escape(view.status)}</span>'
    live = f" · refreshes every {max(1, round(refresh))} s" if refresh is not None else ""
    body = [
        f"</head><body><header><h1>{escape(view.title)}{status}</h1>",
        f"<p>runtime_guard · {_stamp(view.generated)}{live}</p></header><main>",
        '<section id="timeline"><h2>Usage and limit over time</h2>',
        _chart(view),
        "</section>",
    ]
    if view.recycle:
        table = _kv_table(view.recycle, "recycle-table")
        body.append(f'<section id="recycle"><h2>Recycle</h2>{table}</section>')
    if view.health:
        table = _kv_table(view.health, "health-table")
        body.append(f'<section id="health"><h2>Health</h2>{table}</section>')
    for i, leak in enumerate(view.leaks):
        body.append(_leak_section(leak, i, len(view.leaks)))
    if view.unreleased is not None:
        body.append(_unreleased_section(view.unreleased))
    if view.resources is not None:
        body.append(_resources_section(view.resources))
    if view.relief:
        table = _kv_table(view.relief, "relief-table")
        body.append(f'<section id="relief"><h2>Relief</h2>{table}</section>')
    body.append(_events_section(view.events))
    body.append("</main></body></html>\n")
    return "".join(head + body)


def render_html(data: Any, refresh: float | None = None) -> str:
    """Render a report dict (as saved to ``report_dir``, or a timeline snapshot) as HTML.

    Raises :class:`runtime_guard.reports.view.ReportError` when ``data`` is not a report.
    """
    return render_view(read_view(data, live=refresh is not None), refresh)
