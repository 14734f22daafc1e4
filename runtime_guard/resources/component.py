"""Threads, asyncio tasks and file descriptors that pile up: the judgement and its report.

Each is a figure of every sample; its floor (the minimum of each ``resource_window``) must
rise in :data:`~runtime_guard.tracking.component.GROWTH_WINDOWS` windows in a row, and by
at least ``resource_min_growth`` over them, to be reported: the rule memory and tracked
clients are judged by. A thread pool that grows to its size and stays there, or bursts of
short tasks, never get there. A report names the creation sites of the live ones, the
oldest ones with where they are now, and for descriptors their kinds and owners.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime_guard import _stacks, signals
from runtime_guard._component import Component
from runtime_guard.reports.files import write_report
from runtime_guard.resources.creation import CreationHooks, default_hooks
from runtime_guard.resources.fds import describe_fds
from runtime_guard.tracking.component import Floors
from runtime_guard.tracking.records import Record
from runtime_guard.tracking.registry import TOP_SITES

if TYPE_CHECKING:
    from runtime_guard.guard import Guard
    from runtime_guard.sample import Sample

__all__ = ["GUARD_THREADS", "KINDS", "OLDEST", "ResourceReport"]

_log = logging.getLogger("runtime_guard")

KINDS = ("threads", "tasks", "fds")
"""What is judged, each a figure of :class:`~runtime_guard.Sample`."""

OLDEST = 5
"""Oldest threads or pending tasks listed in a report, with their stacks."""

GUARD_THREADS = "runtime-guard"
"""The prefix of the guard's own threads' names: never listed in a report."""

_UNKNOWN_SITE = {
    "site": "(started before the guard, or by a loop it cannot see)",
    "file": "",
    "line": 0,
    "function": "",
    "stack": [],
}


@dataclass
class ResourceReport:
    """Threads, tasks or file descriptors pile up: how many, how fast, made where."""

    kind: str
    """``"threads"``, ``"tasks"`` or ``"fds"``."""
    count: int
    """How many there are now."""
    rise: float
    """How much the floor rose over the judged windows."""
    growth_per_minute: float
    """Robust growth rate of the floor."""
    sites: list[dict[str, Any]] = field(default_factory=list)
    """Creation sites of the live ones (``site``, ``file``, ``line``, ``function``,
    ``stack``, ``count``, ``oldest_age``), most first; for descriptors, their owners
    (tracked objects holding them, with their type)."""
    oldest: list[dict[str, Any]] = field(default_factory=list)
    """The oldest live threads or pending tasks: ``name``, ``age``, ``site`` and ``stack``
    (where each is now, innermost last)."""
    kinds: dict[str, int] = field(default_factory=dict)
    """For descriptors: how many of each kind (``socket``, ``pipe``, ``file``...)."""
    wall: float = field(default_factory=time.time)
    """When the report was made (``time.time()``)."""
    path: str | None = None
    """Where the report was written, with ``report_dir``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "kind": self.kind,
            "count": self.count,
            "rise": self.rise,
            "growth_per_minute": self.growth_per_minute,
            "sites": [dict(s) for s in self.sites],
            "oldest": [dict(o) for o in self.oldest],
            "kinds": dict(self.kinds),
            "wall": self.wall,
            "path": self.path,
        }

    def __str__(self) -> str:
        head = f"{self.count} {self.kind}, growing {self.growth_per_minute:.1f}/min"
        if self.sites:
            top = self.sites[0]
            head += f", most made at {top['site']} ({top['count']})"
        if self.kinds:
            head += " (" + ", ".join(f"{n} {k}" for k, n in self.kinds.items()) + ")"
        lines = [head]
        lines += [f"  {s['count']:>6}  {s['site']}" for s in self.sites[1:]]
        for item in self.oldest[:1]:
            lines.append(f"  oldest: {item['name']} ({item['age']:.0f} s), now at:")
            lines += [f"    {frame}" for frame in item["stack"][-5:]]
        return "\n".join(lines)


def _group(items: list[tuple[Record | None, float | None]], now: float) -> list[dict[str, Any]]:
    rows: dict[Any, dict[str, Any]] = {}
    for rec, created in items:
        key = None if rec is None else rec.site.where
        row = rows.get(key)
        if row is None:
            site = _UNKNOWN_SITE if rec is None else rec.site.to_dict()
            row = rows[key] = {**site, "count": 0, "oldest_age": 0.0}
        row["count"] += 1
        if created is not None:
            row["oldest_age"] = round(max(row["oldest_age"], now - created), 3)
    return sorted(rows.values(), key=lambda r: -r["count"])[:TOP_SITES]


class ResourceComponent(Component):
    """Judges threads, tasks and file descriptors on every sample; reports what piles up."""

    name = "resources"

    def __init__(
        self,
        window: float = 30.0,
        min_growth: int = 10,
        *,
        hooks: CreationHooks | None = None,
        record_sites: bool = True,
    ) -> None:
        self.window = window
        """Seconds per window whose minimum is a floor."""
        self.min_growth = min_growth
        """Least rise of the floor over the judged windows that is reported."""
        self.hooks = hooks or default_hooks
        """Where thread and task creation sites come from."""
        self.reports: deque[ResourceReport] = deque(maxlen=20)
        """The last reports sent, newest last."""
        self._floors = {kind: Floors(window) for kind in KINDS}
        self._growing: set[str] = set()
        self._records_sites = record_sites
        if record_sites:
            self.hooks.enable()

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        floors, at = self._floors, sample.monotonic
        closed = floors["threads"].add(at, sample.threads)
        closed = floors["tasks"].add(at, sample.tasks) or closed
        if sample.fds >= 0:
            closed = floors["fds"].add(at, sample.fds) or closed
        if closed:  # once per window: the judgement
            self._judge(guard, sample)

    def _judge(self, guard: Guard, sample: Sample) -> None:
        figures = {"threads": sample.threads, "tasks": sample.tasks, "fds": sample.fds}
        # The three share their windows: each closes with the others.
        for kind, value in figures.items():
            if value < 0:
                continue
            growth = self._floors[kind].growth(self.min_growth)
            if growth is None:
                self._growing.discard(kind)  # the episode ends with a window that did not rise
            elif kind not in self._growing:
                self._growing.add(kind)
                self._report(guard, kind, value, *growth)

    def build_report(
        self, kind: str, count: int, rise: float = 0.0, rate: float = 0.0
    ) -> ResourceReport:
        """The report on ``kind`` now: sites, oldest ones, and descriptor kinds."""
        report = ResourceReport(kind, count, round(rise, 3), round(rate, 3))
        now = time.monotonic()
        if kind == "threads":
            self._threads(report, now)
        elif kind == "tasks":
            self._tasks(report, now)
        else:
            described = describe_fds()
            report.kinds = described["kinds"]
            report.sites = described["owners"]
        return report

    def _threads(self, report: ResourceReport, now: float) -> None:
        live = [
            (t, self.hooks.record_of(t))
            for t in threading.enumerate()
            if not t.name.startswith(GUARD_THREADS) and t is not threading.main_thread()
        ]
        report.sites = _group([(rec, rec.created if rec else None) for _, rec in live], now)
        known: list[tuple[threading.Thread, Record]] = [(t, r) for t, r in live if r is not None]
        known.sort(key=lambda pair: pair[1].created)
        report.oldest = [
            {
                "name": thread.name,
                "age": round(now - rec.created, 3),
                "site": str(rec.site),
                "stack": _stacks.thread_stack(thread.ident),
            }
            for thread, rec in known[:OLDEST]
        ]

    def _tasks(self, report: ResourceReport, now: float) -> None:
        pending = [(task, rec) for task, rec in self.hooks.tasks() if not task.done()]
        report.sites = _group([(rec, rec.created) for _, rec in pending], now)
        report.oldest = [
            {
                "name": task.get_name(),
                "age": round(now - rec.created, 3),
                "site": str(rec.site),
                "stack": _stacks.task_stack(task),
            }
            for task, rec in pending[:OLDEST]
        ]

    def _report(self, guard: Guard, kind: str, count: int, rise: float, rate: float) -> None:
        report = self.build_report(kind, count, rise, rate)
        if guard.config.report_dir:
            report.path = write_report(guard.config.report_dir, "resources", report.to_dict())
        self.reports.append(report)
        _log.warning("runtime_guard: %s pile up: %s", kind, report)
        guard.send(signals.resources_growing, report=report)

    def health(self, guard: Guard) -> dict[str, Any]:
        latest = guard.history.latest()
        figures = (
            {}
            if latest is None
            else {
                "threads": latest.threads,
                "tasks": latest.tasks,
                "fds": latest.fds,
            }
        )
        return {"resources": {**figures, "growing": sorted(self._growing)}}

    def after_fork(self, guard: Guard) -> None:
        self._floors = {kind: Floors(self.window) for kind in KINDS}
        self._growing.clear()

    def close(self, guard: Guard) -> None:
        if self._records_sites:
            self._records_sites = False
            self.hooks.disable()
