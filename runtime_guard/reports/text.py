"""A report as plain text for a terminal: the same sections as the HTML page, in words."""

from __future__ import annotations

import time
from typing import Any

from runtime_guard.pressure import LEVELS
from runtime_guard.reports.view import ReportView, fmt_bytes, read_view

__all__ = ["render_text", "render_view_text"]

_SPARK = " ▁▂▃▄▅▆▇█"


def _stamp(wall: float | None) -> str:
    if wall is None:
        return "unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def _table(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{indent}{k:<{width}}  {v}" for k, v in rows]


def _spark(values: list[float], width: int = 60) -> str:
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [max(values[int(i * step) : int((i + 1) * step)] or [0.0]) for i in range(width)]
    top = max(values) or 1.0
    return "".join(_SPARK[min(8, round(v / top * 8))] for v in values)


def render_view_text(view: ReportView) -> str:
    """Render a checked :class:`ReportView` as text."""
    status = f" [{view.status}]" if view.status else ""
    lines = [f"{view.title}{status} - {_stamp(view.generated)}"]
    if view.recycle:
        lines += ["", "Recycle", *_table(view.recycle)]
    if view.points:
        first, last = view.points[0], view.points[-1]
        peak = max(view.points, key=lambda p: p.usage)
        peak_at = time.strftime("%H:%M:%S", time.gmtime(peak.wall))
        worst = max(p.level for p in view.points)
        lines += ["", "Usage over time"]
        lines.append(f"  {_spark([p.usage for p in view.points])}")
        lines += _table(
            [
                ("span", f"{last.wall - first.wall:.0f} s, {len(view.points)} samples"),
                ("usage", f"{fmt_bytes(first.usage)} -> {fmt_bytes(last.usage)}"),
                (
                    "peak",
                    f"{fmt_bytes(peak.usage)} at {peak_at}",
                ),
                ("limit", fmt_bytes(last.limit)),
                ("worst pressure", LEVELS[worst].upper()),
            ]
        )
    if view.health:
        lines += ["", "Health", *_table(view.health)]
    for i, leak in enumerate(view.leaks):
        lines += ["", "Leak" if i == 0 else f"Other leak report {i}", *_table(leak.summary)]
        if leak.note:
            lines.append(f"  note: {leak.note}")
        if leak.sites:
            lines.append("  top allocation sites:")
            for site in leak.sites[:10]:
                lines.append(
                    f"    {site.location} in {site.function}: +{site.size}, {site.count} blocks"
                )
                lines += [f"        {frame}" for frame in site.traceback[:6]]
        if leak.holder:
            lines.append(f"  held by: {leak.holder}")
        if leak.routes:
            lines.append("  routes, by what each request leaves allocated:")
            lines += [
                f"    {row.route}: {row.per_request} per request, {row.requests} requests "
                f"({row.share:.0%} of the growth, {row.method})"
                for row in leak.routes[:10]
            ]
        if leak.types:
            lines.append("  growing types:")
            lines += [
                f"    {t.name}: {t.before} -> {t.after} ({t.growth:+,.0f})" for t in leak.types[:10]
            ]
        if leak.chain:
            lines.append("  referrer chain:")
            lines.append("    " + " -> ".join(leak.chain))
    if view.unreleased is not None:
        unrel = view.unreleased
        lines += ["", "Unreleased clients", *_table(unrel.summary)]
        for name, live, unreleased, collected in unrel.types:
            lines.append(
                f"  {name}: {live} live, {unreleased} unreleased, {collected} collected unreleased"
            )
        if unrel.sites:
            lines.append("  by creation site:")
            for row in unrel.sites[:10]:
                detail = f" ({row.detail})" if row.detail else ""
                lines.append(f"    {row.count:>6}  {row.type_name} at {row.site}{detail}")
    if view.resources is not None:
        res = view.resources
        lines += ["", "Pools, threads, tasks and stuck work", *_table(res.summary)]
        for name, in_use, waiting, held, oldest in res.pools:
            lines.append(
                f"  {name}: {in_use} in use, {waiting} waiting, {held} held too long, "
                f"oldest checkout {oldest}"
            )
        for row in res.reports[-10:]:
            lines.append(f"  {row.type_name:<7} {row.detail}")
            lines += [f"          {frame}" for frame in row.stack[-4:]]
    if view.relief:
        lines += ["", "Relief", *_table(view.relief)]
    if view.events:
        lines += ["", "Events"]
        lines += [
            f"  {time.strftime('%H:%M:%S', time.gmtime(e.wall))}  {e.kind:<10} {e.label}"
            for e in view.events[-40:]
        ]
    return "\n".join(lines) + "\n"


def render_text(data: Any) -> str:
    """Render a report dict as text; raises ``ReportError`` when it is not a report."""
    return render_view_text(read_view(data))
