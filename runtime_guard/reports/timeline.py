"""What happened when: the guard's events beside its samples, for reports and the live page.

The :class:`Timeline` component listens to the guard's own signals and keeps the recent
events (pressure changes, leak suspicions, relief, features shed and restored, recycle
requests, connections held too long and exhausted pools, stuck work, a blocked event loop,
piling threads, tasks and descriptors) and the latest reports in bounded buffers. :func:`snapshot`
joins them with the sample history into one JSON-ready dict, the input of
:mod:`runtime_guard.reports.html`, :mod:`runtime_guard.reports.text` and the live status page.
With ``report_dir`` set, each pressure episode (from leaving OK until back at OK) is also
written there as an ``episode`` report that ``runtime-guard report`` renders.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from runtime_guard import signals
from runtime_guard._component import Component
from runtime_guard.pressure import Pressure
from runtime_guard.reports.files import write_report

if TYPE_CHECKING:
    from runtime_guard.guard import Guard
    from runtime_guard.sample import Sample

__all__ = [
    "MAX_EVENTS",
    "MAX_LEAKS",
    "MAX_POINTS",
    "MAX_RESOURCE_REPORTS",
    "MAX_TYPES",
    "sample_point",
    "snapshot",
]

MAX_EVENTS = 500
"""Events kept; the oldest drop out."""

MAX_LEAKS = 3
"""Leak reports kept, newest first: a later suspicion does not hide an earlier diagnosis."""

MAX_TYPES = 50
"""Tracked types whose latest unreleased report is kept."""

MAX_RESOURCE_REPORTS = 50
"""Reports on pools, stuck work, the event loop and piling threads kept, newest last."""

MAX_POINTS = 600
"""Samples put in a snapshot at most; longer histories are thinned evenly (the last kept)."""

# Seconds of history written before an episode's start, so the climb into it shows.
_EPISODE_LEAD = 60.0


def sample_point(sample: Sample) -> dict[str, Any]:
    """The figures of a sample a chart needs, JSON-ready and small."""
    return {
        "wall": round(sample.wall, 3),
        "usage": sample.usage,
        "limit": sample.limit,
        "rss": sample.rss,
        "fraction": round(sample.usage_fraction, 5),
        "pressure": sample.pressure.name.lower(),
        "threads": sample.threads,
        "tasks": sample.tasks,
        "fds": sample.fds,
        "loop_lag": None if sample.loop_lag is None else round(sample.loop_lag, 4),
    }


def _thin(samples: list[Sample], points: int) -> list[Sample]:
    if len(samples) <= points:
        return samples
    step = len(samples) / points
    picked = [samples[int(i * step)] for i in range(points - 1)]
    picked.append(samples[-1])
    return picked


def _as_dict(obj: Any) -> dict[str, Any]:
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        data = to_dict()
        if isinstance(data, dict):
            return data
    return {"summary": str(obj)}


def _first_line(obj: Any, prefix: str, limit: int = 160) -> str:
    text = str(obj).strip().splitlines()
    line = text[0] if text else ""
    if not line.startswith(prefix):
        line = f"{prefix}: {line}"
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Timeline(Component):
    """Records the guard's events and latest reports; attached to every installed guard."""

    name = "timeline"

    def __init__(self, guard: Guard) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        """Recent events, oldest first: ``{"wall", "kind", "label"}``."""
        self.latest: dict[str, dict[str, Any]] = {}
        """The last report of each kind seen (``leak``, ``unreleased``, ``relief``)."""
        self._unreleased: dict[str, dict[str, Any]] = {}
        self._leaks: deque[dict[str, Any]] = deque(maxlen=MAX_LEAKS)
        self._lock = threading.Lock()
        self._episode_start: float | None = None
        self._receivers = [
            (signals.pressure_changed, self._on_pressure_changed),
            (signals.leak_suspected, self._on_leak),
            (signals.unreleased_objects, self._on_unreleased),
            (signals.gc_forced, self._on_relief),
            (signals.feature_shed, self._on_shed),
            (signals.feature_restored, self._on_restored),
            (signals.restart_requested, self._on_restart),
            (signals.recycle_pending, self._on_recycle_pending),
            *self._resource_receivers(),
        ]
        for signal, receiver in self._receivers:
            signal.connect(receiver, sender=guard, weak=False)

    def record(self, kind: str, label: str, wall: float | None = None) -> None:
        """Add an event (``kind`` is one of the marker kinds the chart knows)."""
        event = {"wall": round(time.time() if wall is None else wall, 3), "kind": kind}
        event["label"] = label
        with self._lock:
            self.events.append(event)

    def _keep(self, kind: str, report: Any) -> dict[str, Any]:
        data = _as_dict(report)
        with self._lock:
            self.latest[kind] = data
        return data

    def _on_pressure_changed(self, guard: Guard, **payload: Any) -> None:
        old, new, sample = payload.get("old"), payload.get("new"), payload.get("sample")
        wall = getattr(sample, "wall", None)
        self.record("pressure", f"{getattr(old, 'name', old)} -> {getattr(new, 'name', new)}", wall)

    def _on_leak(self, guard: Guard, **payload: Any) -> None:
        report = payload.get("report")
        data = self._keep("leak", report)
        with self._lock:
            self._leaks.appendleft(data)
        self.record("leak", _first_line(report, "leak suspected"))

    def _on_unreleased(self, guard: Guard, **payload: Any) -> None:
        report = payload.get("report")
        data = _as_dict(report)
        name = str(data.get("type", "object"))
        with self._lock:
            # One report per tracked type; the number of types is small and bounded here.
            if name in self._unreleased or len(self._unreleased) < MAX_TYPES:
                self._unreleased[name] = data
        self.record("unreleased", _first_line(report, "unreleased objects"))

    def _on_relief(self, guard: Guard, **payload: Any) -> None:
        result = payload.get("result")
        self._keep("relief", result)
        self.record("relief", _first_line(result, "relief"))

    def _on_shed(self, guard: Guard, **payload: Any) -> None:
        feature = payload.get("feature")
        self.record("shed", f"shed {getattr(feature, 'name', feature)}")

    def _on_restored(self, guard: Guard, **payload: Any) -> None:
        feature = payload.get("feature")
        self.record("restore", f"restored {getattr(feature, 'name', feature)}")

    def _on_restart(self, guard: Guard, **payload: Any) -> None:
        self.record("recycle", f"recycle requested: {payload.get('reason', '')}")

    def _on_recycle_pending(self, guard: Guard, **payload: Any) -> None:
        self.record("recycle", f"recycle pending: {payload.get('reason', '')}")

    # -- resources that run out before memory (pools, threads and tasks, stuck work, loop)

    def _resource_receivers(self) -> list[tuple[Any, Any]]:
        self._resources: deque[dict[str, Any]] = deque(maxlen=MAX_RESOURCE_REPORTS)
        return [
            (signals.checkout_held, self._on_checkout_held),
            (signals.pool_exhausted, self._on_pool_exhausted),
            (signals.work_stuck, self._on_work_stuck),
            (signals.loop_blocked, self._on_loop_blocked),
            (signals.resources_growing, self._on_resources_growing),
        ]

    def _keep_resource(self, kind: str, label: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._resources.append({"kind": kind, "label": label, **data})
        self.record(kind, label)

    def _on_checkout_held(self, guard: Guard, **payload: Any) -> None:
        site, seconds = payload.get("site"), payload.get("seconds") or 0.0
        label = f"connection of {payload.get('pool')} held {seconds:.0f} s, from {site}"
        to_dict = getattr(site, "to_dict", None)
        stack = to_dict().get("stack", []) if callable(to_dict) else []
        self._keep_resource("pool", label, {"site": str(site), "stack": stack})

    def _on_pool_exhausted(self, guard: Guard, **payload: Any) -> None:
        holders = list(payload.get("holders") or [])
        sites = [str(getattr(h, "site", h)) for h in holders]
        label = (
            f"pool {payload.get('pool')} exhausted: {payload.get('in_use')} in use, "
            f"{payload.get('waiting')} waiting"
        )
        self._keep_resource("pool", label, {"site": sites[0] if sites else "", "stack": sites})

    def _on_work_stuck(self, guard: Guard, **payload: Any) -> None:
        stack = list(payload.get("stack") or [])
        label = f"{payload.get('task')} stuck for {payload.get('seconds') or 0.0:.0f} s"
        self._keep_resource("stuck", label, {"site": stack[-1] if stack else "", "stack": stack})

    def _on_loop_blocked(self, guard: Guard, **payload: Any) -> None:
        lag, callback = payload.get("lag") or 0.0, payload.get("callback")
        label = f"event loop {lag * 1000:.0f} ms late" + (
            f", blocked by {callback}" if callback else ""
        )
        stack = list(payload.get("stack") or [])
        self._keep_resource("loop", label, {"site": callback or "", "stack": stack})

    def _on_resources_growing(self, guard: Guard, **payload: Any) -> None:
        report = payload.get("report")
        data = _as_dict(report)
        top = (data.get("sites") or [{}])[0]
        label = _first_line(report, "resources growing")
        self._keep_resource(
            "growth", label, {"site": top.get("site", ""), "stack": top.get("stack", [])}
        )

    def on_pressure(self, guard: Guard, old: Pressure, new: Pressure, sample: Sample) -> None:
        if old == Pressure.OK and new > Pressure.OK:
            self._episode_start = sample.monotonic
        elif new == Pressure.OK and self._episode_start is not None:
            start, self._episode_start = self._episode_start, None
            if guard.config.report_dir:
                data = snapshot(guard, since=start - _EPISODE_LEAD)
                data["episode"] = {"start_monotonic": start, "end_monotonic": sample.monotonic}
                write_report(guard.config.report_dir, "episode", data)

    def after_fork(self, guard: Guard) -> None:
        with self._lock:
            self.events.clear()
            self.latest.clear()
            self._unreleased.clear()
            self._leaks.clear()
            self._resources.clear()
        self._episode_start = None

    def close(self, guard: Guard) -> None:
        for signal, receiver in self._receivers:
            # Without a sender: blinker only forgets a receiver disconnected from ANY.
            signal.disconnect(receiver)

    def copy(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Return the events and latest reports as lists and dicts the caller owns."""
        with self._lock:
            latest: dict[str, Any] = dict(self.latest)
            if self._unreleased:
                latest["unreleased"] = {"types": dict(self._unreleased)}
            if self._leaks:
                latest["leaks"] = list(self._leaks)
            if self._resources:
                latest["resources"] = list(self._resources)
            return list(self.events), latest


def snapshot(guard: Guard, since: float | None = None, points: int = MAX_POINTS) -> dict[str, Any]:
    """Return the guard's recent history, events and reports as one JSON-ready dict.

    ``since`` is a ``time.monotonic()`` value: only samples from then on are included.
    """
    samples = guard.history.snapshot() if since is None else guard.history.since(since)
    config = guard.config
    data: dict[str, Any] = {
        "kind": "episode",
        "generated": round(time.time(), 3),
        "thresholds": {
            "elevated": config.elevated,
            "high": config.high,
            "critical": config.critical,
        },
        "samples": [sample_point(s) for s in _thin(samples, points)],
        "events": [],
    }
    component = guard.component("timeline")
    if isinstance(component, Timeline):
        events, latest = component.copy()
        first = samples[0].wall if samples else 0.0
        data["events"] = [e for e in events if e["wall"] >= first - 1.0]
        data.update(latest)
    try:
        data["health"] = guard.health()
    except Exception as exc:  # the page must render even when a component misbehaves
        data["health"] = {"status": "unknown", "error": repr(exc)}
    return data
