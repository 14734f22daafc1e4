"""A saved or live report, read defensively into plain rows that both renderers draw.

Report files come from disk and may be truncated, edited or hostile: every figure is
coerced and every list and string is capped here, so the text and HTML renderers never
see anything but the types below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from runtime_guard._units import format_duration, format_size
from runtime_guard.pressure import LEVELS

__all__ = [
    "ClientRow",
    "Event",
    "LeakView",
    "Point",
    "ReportError",
    "ReportView",
    "ResourcesView",
    "RouteRow",
    "SiteRow",
    "TypeRow",
    "UnreleasedView",
    "fmt_bytes",
    "read_view",
]

MAX_POINTS = 5000
MAX_EVENTS = 1000
MAX_ROWS = 50
MAX_FRAMES = 30
MAX_TEXT = 2000
MAX_SVG = 64 * 1024
MARKER_KINDS = (
    "leak",
    "unreleased",
    "relief",
    "shed",
    "restore",
    "recycle",
    "pressure",
    "pool",
    "stuck",
    "loop",
    "growth",
)


class ReportError(ValueError):
    """The data is not a report this version can render; the message says why."""


# Control characters other than tab: a hostile report could otherwise move the cursor,
# recolour or clear the terminal it is printed on ("\x1b[2J"), or forge lines ("\r").
_CONTROLS = {c: "\ufffd" for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x09}


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    text = value if isinstance(value, str) else "" if value is None else str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    # JSON may carry lone surrogates ("\ud800"), which no UTF-8 page or terminal can take.
    return text.encode("utf-8", "replace").decode("utf-8").translate(_CONTROLS)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None
        else:
            return None
    number = float(value)
    return number if math.isfinite(number) else None


# The last second of year 9999: a time past it (or before 1970) is no moment any clock of
# this process wrote, and the renderers' strftime cannot show it.
_LAST_WALL = 253_402_300_799.0


def _wall(value: Any) -> float | None:
    """A wall-clock time in seconds, or None when it is not one a report can show."""
    number = _num(value)
    return number if number is not None and 0.0 <= number <= _LAST_WALL else None


def _list(value: Any, limit: int) -> list[Any]:
    return list(value[:limit]) if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _first(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in data and data[key] is not None:
            return data[key]
    return None


def fmt_bytes(value: float | None) -> str:
    """Bytes in words, or a dash when unknown."""
    return "-" if value is None else format_size(value)


def _fmt_count(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+,.0f}" if signed else f"{value:,.0f}"


@dataclass
class Point:
    """One sample on the timeline."""

    wall: float
    usage: float
    limit: float | None
    rss: float | None
    level: int


@dataclass
class Event:
    """One marker on the timeline."""

    wall: float
    kind: str
    label: str


@dataclass
class SiteRow:
    """An allocation site that grew."""

    location: str
    function: str
    size: str
    count: str
    traceback: list[str]


@dataclass
class TypeRow:
    """A type whose instance count grew."""

    name: str
    before: str
    after: str
    growth: float


@dataclass
class RouteRow:
    """A route (or task) and what each of its requests leaves allocated."""

    route: str
    per_request: str
    requests: str
    share: float
    method: str


@dataclass
class LeakView:
    """The leak part of a report."""

    summary: list[tuple[str, str]]
    sites: list[SiteRow]
    types: list[TypeRow]
    chain: list[str]
    note: str
    holder: str = ""
    """The holder in one line: ``app.cache._RESPONSES (dict): 48.2 MiB in 502 entries``."""
    holder_svg: str = ""
    """The chain drawn by Graphviz (SVG text, shown as an image, never inline)."""
    routes: list[RouteRow] = field(default_factory=list)
    detected: float = 0.0

    @property
    def usefulness(self) -> int:
        """How much a reader can act on: sites and a holder, then sites, then nothing."""
        return 2 * bool(self.sites) + bool(self.holder or self.chain) + bool(self.routes)


@dataclass
class ClientRow:
    """Unreleased instances of one type created at one site."""

    type_name: str
    site: str
    count: str
    detail: str
    stack: list[str]


@dataclass
class UnreleasedView:
    """The unreleased-objects part of a report."""

    summary: list[tuple[str, str]]
    types: list[tuple[str, str, str, str]]
    sites: list[ClientRow]


@dataclass
class ResourcesView:
    """Pools, threads, tasks, descriptors, stuck work and the event loop."""

    summary: list[tuple[str, str]]
    pools: list[tuple[str, str, str, str, str]]
    """Per pool: name, in use (of size), waiting, held too long, oldest checkout."""
    reports: list[ClientRow]
    """The latest reports: what, where, how long, and their stacks."""


@dataclass
class ReportView:
    """Everything a renderer draws, already checked and capped."""

    kind: str
    title: str
    generated: float | None
    thresholds: dict[str, float]
    points: list[Point] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    leaks: list[LeakView] = field(default_factory=list)
    unreleased: UnreleasedView | None = None
    relief: list[tuple[str, str]] = field(default_factory=list)
    recycle: list[tuple[str, str]] = field(default_factory=list)
    health: list[tuple[str, str]] = field(default_factory=list)
    resources: ResourcesView | None = None
    status: str = ""


_TITLES = {
    "episode": "Memory pressure episode",
    "leak": "Leak report",
    "unreleased": "Unreleased objects report",
    "relief": "Relief report",
    "recycle": "Worker recycle report",
    "pressure": "Memory pressure report",
    "live": "Live memory status",
}


def _level(value: Any) -> int:
    if isinstance(value, str) and value.lower() in LEVELS:
        return LEVELS.index(value.lower())
    number = _num(value)
    return int(number) if number is not None and 0 <= number <= 3 else 0


def _points(raw: Any) -> list[Point]:
    points: list[Point] = []
    for raw_item in _list(raw, MAX_POINTS * 4):
        item = _dict(raw_item)
        wall, usage = _wall(item.get("wall")), _num(item.get("usage"))
        if wall is None or usage is None:
            continue
        points.append(
            Point(
                wall=wall,
                usage=usage,
                limit=_num(item.get("limit")),
                rss=_num(item.get("rss")),
                level=_level(item.get("pressure")),
            )
        )
    points.sort(key=lambda p: p.wall)
    if len(points) > MAX_POINTS:
        step = len(points) / MAX_POINTS
        points = [points[int(i * step)] for i in range(MAX_POINTS)]
    return points


def _events(raw: Any) -> list[Event]:
    events = []
    for raw_item in _list(raw, MAX_EVENTS):
        item = _dict(raw_item)
        wall = _wall(item.get("wall"))
        kind = _text(item.get("kind"), 20)
        if wall is None or kind not in MARKER_KINDS:
            continue
        events.append(Event(wall, kind, _text(item.get("label"), 300)))
    events.sort(key=lambda e: e.wall)
    return events


def _rate(value: Any) -> str:
    number = _num(value)
    return "-" if number is None else f"{number / 1e6 * 60:.2f} MB/min"


def _summary(
    data: dict[str, Any], spec: list[tuple[str, tuple[str, ...], str]]
) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for label, keys, form in spec:
        value = _first(data, *keys)
        if value is None or any(row[0] == label for row in rows):
            continue
        if form == "bytes":
            shown = fmt_bytes(_num(value))
        elif form == "rate":
            shown = _rate(value)
        elif form == "mbmin":
            number = _num(value)
            shown = "-" if number is None else f"{number:.2f} MB/min"
        elif form == "seconds":
            shown = format_duration(_num(value))
        elif form == "count":
            shown = _fmt_count(_num(value))
        elif form == "mbmin_bytes":
            number = _num(value)
            shown = "-" if number is None else f"{number / 1e6:.2f} MB/min kept"
        elif form == "origin":
            shown = _ORIGINS.get(str(value), _text(value, 40))
        elif form == "reason":
            if value == "growth":
                continue
            shown = _text(value, 300)
        else:
            shown = _text(value, 300)
        rows.append((label, shown))
    return rows


_ORIGINS = {
    "python": "the Python heap (objects of any size made by Python code)",
    "native": "native memory (RSS grows, tracemalloc's total does not)",
    "unknown": "not told apart (no tracemalloc in the diagnosis)",
}

_LEAK_SUMMARY: list[tuple[str, tuple[str, ...], str]] = [
    ("growing figure", ("metric",), "text"),
    ("rate", ("rate_mb_per_min",), "mbmin"),
    ("rate", ("rate_bytes_per_second", "rate"), "rate"),
    ("growing for", ("duration_seconds", "duration"), "seconds"),
    (
        "time to limit",
        ("time_to_limit_seconds", "time_to_limit", "predicted_seconds_to_limit"),
        "seconds",
    ),
    ("what grows", ("origin",), "origin"),
    ("traced by tracemalloc", ("traced_bytes_per_min",), "mbmin_bytes"),
    ("asked by", ("reason",), "reason"),
    ("diagnosis", ("diagnosis",), "text"),
    ("diagnosis, tracemalloc on", ("tracemalloc_seconds", "diagnosis_seconds"), "seconds"),
    ("diagnosis, heap walk", ("heap_walk_seconds", "census_seconds"), "seconds"),
]


def _leak(data: dict[str, Any]) -> LeakView:
    summary = _summary(data, _LEAK_SUMMARY)
    sites = []
    for raw_item in _list(_first(data, "top_sites", "sites", "allocation_sites"), MAX_ROWS):
        item = _dict(raw_item)
        location = _text(item.get("location"), 500)
        if not location:
            line = _num(item.get("lineno"))
            location = f"{_text(item.get('filename'), 500)}:{'' if line is None else int(line)}"
        sites.append(
            SiteRow(
                location=location,
                function=_text(item.get("function"), 200),
                size=fmt_bytes(_num(_first(item, "size_diff", "size"))),
                count=_fmt_count(_num(_first(item, "count_diff", "count")), signed=True),
                traceback=[_text(line, 500) for line in _list(item.get("traceback"), MAX_FRAMES)],
            )
        )
    types = []
    for raw_item in _list(_first(data, "growing_types", "top_types", "types"), MAX_ROWS):
        item = _dict(raw_item)
        growth = _num(item.get("growth"))
        before, after = _num(item.get("before")), _num(item.get("after"))
        if growth is None and before is not None and after is not None:
            growth = after - before
        types.append(
            TypeRow(
                name=_text(_first(item, "type_name", "name", "type"), 300),
                before=_fmt_count(before),
                after=_fmt_count(after),
                growth=growth or 0.0,
            )
        )
    chain = [_text(link, 300) for link in _list(_first(data, "referrer_chain", "chain"), 20)]
    note = _text(_first(data, "note", "explanation"), 1000)
    view = LeakView(summary, sites, types, chain, note)
    view.holder = _holder(_dict(data.get("holder")))
    svg = data.get("holder_svg")
    if isinstance(svg, str) and svg.startswith("<svg") and len(svg) <= MAX_SVG:
        view.holder_svg = svg
    for raw_item in _list(data.get("routes"), MAX_ROWS):
        item = _dict(raw_item)
        per = _num(item.get("bytes_per_request"))
        share = _num(item.get("share"))
        view.routes.append(
            RouteRow(
                route=_text(item.get("route"), 300),
                per_request="-" if per is None else fmt_bytes(max(per, 0.0)),
                requests=_fmt_count(_num(item.get("requests"))),
                share=0.0 if share is None else min(max(share, 0.0), 1.0),
                method=_text(item.get("method"), 20),
            )
        )
    view.detected = _wall(data.get("detected_at")) or 0.0
    return view


def _holder(data: dict[str, Any]) -> str:
    path = _text(data.get("path"), 300)
    if not path:
        return ""
    text = f"{path} ({_text(data.get('type'), 100) or '?'})"
    size, entries = _num(data.get("bytes")), _num(data.get("entries"))
    if size is not None:
        text += f": {fmt_bytes(size)}"
        if (_num(data.get("sampled")) or 0) > 0:
            text += " (estimated)"
    if entries is not None:
        text += f"{':' if size is None else ''} in {entries:,.0f} entries"
    return text


_UNRELEASED_SUMMARY: list[tuple[str, tuple[str, ...], str]] = [
    ("reason", ("reason", "trigger"), "text"),
    ("type", ("type_name", "type"), "text"),
    ("live", ("live",), "count"),
    ("unreleased", ("unreleased",), "count"),
    ("collected without release", ("collected_unreleased", "collected_without_release"), "count"),
]


def _client_rows(type_name: str, raw: Any, rows: list[ClientRow]) -> None:
    for raw_item in _list(raw, MAX_ROWS):
        item = _dict(raw_item)
        age = _num(_first(item, "oldest_age", "oldest_age_seconds", "age"))
        detail = f"oldest {format_duration(age)}" if age is not None else ""
        site = _first(item, "site", "location")
        if site is None:
            line = _num(_first(item, "line", "lineno"))
            where = _text(_first(item, "file", "filename"), 500)
            site = f"{where}:{'' if line is None else int(line)}"
            function = _text(item.get("function"), 200)
            if function:
                site = f"{site} in {function}"
        rows.append(
            ClientRow(
                type_name=_text(_first(item, "type_name", "type") or type_name, 300),
                site=_text(site, 600),
                count=_fmt_count(_num(_first(item, "count", "live", "unreleased"))),
                detail=detail,
                stack=[
                    _text(line, 500)
                    for line in _list(_first(item, "stack", "traceback"), MAX_FRAMES)
                ],
            )
        )


def _unreleased(data: dict[str, Any]) -> UnreleasedView:
    summary = _summary(data, _UNRELEASED_SUMMARY)
    types: list[tuple[str, str, str, str]] = []
    sites: list[ClientRow] = []
    raw_types = _first(data, "types", "objects", "counts")
    entries: list[tuple[str, dict[str, Any]]] = []
    if isinstance(raw_types, dict):
        entries = [(_text(k, 300), _dict(v)) for k, v in list(raw_types.items())[:MAX_ROWS]]
    elif isinstance(raw_types, list):
        for raw_item in _list(raw_types, MAX_ROWS):
            item = _dict(raw_item)
            entries.append((_text(_first(item, "type_name", "type", "name"), 300), item))
    for name, item in entries:
        types.append(
            (
                name,
                _fmt_count(_num(item.get("live"))),
                _fmt_count(_num(item.get("unreleased"))),
                _fmt_count(_num(_first(item, "collected_unreleased", "collected_without_release"))),
            )
        )
        _client_rows(name, _first(item, "sites", "top_sites"), sites)
    _client_rows(_text(_first(data, "type_name", "type"), 300), data.get("sites"), sites)
    return UnreleasedView(summary, types, sites)


def _flat(data: dict[str, Any], keys: tuple[str, ...]) -> list[tuple[str, str]]:
    rows = []
    for key in keys:
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, (dict, list)):
            value = ", ".join(_text(v, 100) for v in list(value)[:20]) or "none"
        if key.endswith("_bytes") or key in _BYTE_KEYS:
            shown = fmt_bytes(_num(value))
        elif key in _SECOND_KEYS:
            shown = format_duration(_num(value))
        elif key.endswith("_fraction"):
            number = _num(value)
            shown = "-" if number is None else f"{number:.1%}"
        else:
            shown = _text(value, 300)
        rows.append((key.replace("_", " "), shown))
    return rows


_HEALTH_KEYS = (
    "status",
    "pressure",
    "usage_bytes",
    "limit_bytes",
    "usage_fraction",
    "rss_bytes",
    "uptime_seconds",
    "samples",
    "threads",
    "shed_features",
)
_RELIEF_KEYS = (
    "reason",
    "level",
    "collected",
    "usage_before",
    "usage_after",
    "returned",
    "trimmed",
    "duration",
)
_RECYCLE_KEYS = (
    "reason",
    "pid",
    "seconds_to_limit",
    "drain_seconds",
    "growth_bytes",
    "rising_bytes",
    "usage_bytes",
    "limit_bytes",
    "rss_bytes",
    "uptime_seconds",
)
_BYTE_KEYS = frozenset({"usage_before", "usage_after", "rss_before", "rss_after", "returned"})
_SECOND_KEYS = frozenset({"duration", "uptime_seconds", "seconds_to_limit", "drain_seconds"})


def _resources(health: dict[str, Any], reports: list[Any]) -> ResourcesView | None:
    figures = _dict(health.get("resources"))
    loop = _dict(health.get("event_loop"))
    stuck = _list(health.get("stuck_work"), MAX_ROWS)
    summary = [
        (name, _fmt_count(_num(figures.get(name))))
        for name in ("threads", "tasks", "fds")
        if _num(figures.get(name)) is not None
    ]
    growing = _list(figures.get("growing"), 5)
    if growing:
        summary.append(("growing", ", ".join(_text(g, 20) for g in growing)))
    lag = _num(loop.get("lag_seconds"))
    if lag is not None:
        summary.append(("event loop lag", f"{lag * 1000:.0f} ms"))
    if stuck:
        summary.append(("work past its deadline", str(len(stuck))))
    pools = []
    for name, raw in list(_dict(health.get("pools")).items())[:MAX_ROWS]:
        pool = _dict(raw)
        size = _num(pool.get("size"))
        in_use = _fmt_count(_num(pool.get("in_use")))
        waiting = _num(pool.get("waiting"))
        pools.append(
            (
                _text(name, 200),
                in_use if size is None else f"{in_use} of {_fmt_count(size)}",
                "?" if waiting is None or waiting < 0 else _fmt_count(waiting),
                _fmt_count(_num(pool.get("held_too_long"))),
                format_duration(_num(pool.get("oldest_checkout_seconds"))),
            )
        )
    rows = []
    for raw in reports[-MAX_ROWS:]:
        item = _dict(raw)
        rows.append(
            ClientRow(
                type_name=_text(item.get("kind"), 20),
                site=_text(item.get("site"), 300),
                count="",
                detail=_text(item.get("label"), 300),
                stack=[_text(f, 300) for f in _list(item.get("stack"), MAX_FRAMES)],
            )
        )
    if not (summary or pools or rows):
        return None
    return ResourcesView(summary, pools, rows)


def read_view(data: Any, live: bool = False) -> ReportView:
    """Read a report dict (as saved, or from :func:`runtime_guard.reports.timeline.snapshot`)."""
    if not isinstance(data, dict):
        raise ReportError(f"expected a JSON object at the top, got {type(data).__name__}")
    kind = "live" if live else _text(data.get("kind") or "report", 40)
    thresholds = {
        name: value
        for name in ("elevated", "high", "critical")
        if (value := _num(_dict(data.get("thresholds")).get(name))) is not None and 0 < value < 2
    }
    view = ReportView(
        kind=kind,
        title=_TITLES.get(kind, "runtime_guard report"),
        generated=_wall(_first(data, "generated", "detected_at", "wall", "time")),
        thresholds=thresholds or {"elevated": 0.70, "high": 0.85, "critical": 0.95},
        points=_points(data.get("samples")),
        events=_events(data.get("events")),
    )
    if kind == "leak":
        view.leaks = [_leak(data)]
    else:
        leaks = [_dict(item) for item in _list(data.get("leaks"), 5)] or [_dict(data.get("leak"))]
        # The report a reader can act on first (sites and a holder), the latest among equals.
        view.leaks = sorted(
            (_leak(item) for item in leaks if item),
            key=lambda leak: (-leak.usefulness, -leak.detected),
        )
    unreleased = data if kind == "unreleased" else _dict(data.get("unreleased"))
    if unreleased:
        view.unreleased = _unreleased(unreleased)
    relief = data if kind == "relief" else _dict(data.get("relief"))
    view.relief = _flat(relief, _RELIEF_KEYS)
    view.recycle = _flat(_dict(data.get("recycle")), _RECYCLE_KEYS)
    health = _dict(data.get("health"))
    view.health = _flat(health, _HEALTH_KEYS)
    view.resources = _resources(health, _list(data.get("resources"), MAX_ROWS))
    view.status = _text(health.get("status"), 20)
    if kind == "episode" and view.points:
        # An episode is judged by its worst moment, not by the health at its end.
        view.status = LEVELS[max(p.level for p in view.points)]
    if not (
        view.points or view.leaks or view.unreleased or view.relief or view.recycle or view.health
    ):
        raise ReportError(
            "no samples, leak, unreleased, relief or health data found: not a runtime_guard report"
        )
    return view
