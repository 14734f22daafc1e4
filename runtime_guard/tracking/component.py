"""Unreleased client objects: the judgement on tracked counts, its signal, report and health.

The registry (:mod:`runtime_guard.tracking.registry`) counts live instances of tracked classes
with their creation sites, with or without a guard; this module's component judges those
counts on every sample (over ``max_live``, growing steadily, collected without release)
and sends ``signals.unreleased_objects`` once per episode.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime_guard import signals
from runtime_guard._component import Component
from runtime_guard._trend import sustained_growth, theil_sen, window_minima
from runtime_guard.reports.files import write_report
from runtime_guard.tracking.registry import Counts, TrackingRegistry, default_registry

if TYPE_CHECKING:
    from runtime_guard.guard import Guard
    from runtime_guard.sample import Sample

__all__ = [
    "Floors",
    "UnreleasedReport",
    "build_report",
    "judge_growth",
]

_log = logging.getLogger("runtime_guard")

# -- judgement and reports ----------------------------------------------------------------

GROWTH_WINDOWS = 4
"""Consecutive windows whose floor of unreleased instances must each rise to call it growth."""

WINDOW_SAMPLES = 10
"""Samples per window: the window is this many intervals long."""

QUIET_SAMPLES = 30
"""Samples without any reason to report after which an episode ends."""


def judge_growth(points: Sequence[tuple[float, float]], window: float) -> float | None:
    """Growth per minute when ``(time, unreleased)`` points grow steadily, else ``None``.

    Steady means the floor of each of the last :data:`GROWTH_WINDOWS` windows rose over the
    one before (bursts that are released again do not count), like the leak detector's
    judgement on memory baselines.
    """
    minima = window_minima(points, window)
    if not sustained_growth([value for _, value in minima], GROWTH_WINDOWS):
        return None
    slope = theil_sen(minima[-(GROWTH_WINDOWS + 1) :])
    return slope * 60.0 if slope > 0 else None


class Floors:
    """The minimum of each window of ``window`` seconds, for the last few windows."""

    def __init__(self, window: float, keep: int = GROWTH_WINDOWS + 1) -> None:
        self.window = window
        self.floors: deque[tuple[float, float]] = deque(maxlen=keep)
        """``(window end, minimum)`` of the last complete windows, oldest first."""
        self._end: float | None = None
        self._low: float | None = None

    def add(self, at: float, value: float) -> bool:
        """Fold in one value; True when it closed a window (a new floor is in)."""
        end = self._end
        if end is not None and at < end:  # the common case: one comparison more
            low = self._low
            if low is None or value < low:
                self._low = value
            return False
        if end is None:
            self._end = at + self.window
            self._low = value
            return False
        self.floors.append((end, self._low if self._low is not None else value))
        # Windows without a sample (a suspended process) leave no floor.
        while at >= end:
            end += self.window
        self._end, self._low = end, value
        return True

    def growth(self, min_rise: float) -> tuple[float, float] | None:
        """``(rise, per minute)`` when each floor rose over the one before and the floors
        rose by ``min_rise`` in all, else ``None``."""
        values = [v for _, v in self.floors]
        if not sustained_growth(values, GROWTH_WINDOWS):
            return None
        rise = values[-1] - values[-(GROWTH_WINDOWS + 1)]
        if rise < min_rise:
            return None
        return rise, theil_sen(list(self.floors)) * 60.0


@dataclass
class UnreleasedReport:
    """Instances of one tracked type pile up unreleased, or are collected without release."""

    type: str
    """The tracked type's name (``redis.Redis``)."""
    reasons: list[str]
    """Why it is reported: ``max_live``, ``growing``, ``collected_unreleased``."""
    live: int
    """Live instances."""
    unreleased: int
    """Live instances never released."""
    released: int
    """Instances released so far."""
    collected_unreleased: int
    """Instances collected without ever being released, since tracking began."""
    created: int
    """Instances created since tracking began."""
    max_live: int | None = None
    """The configured limit on live instances."""
    growth_per_minute: float | None = None
    """Robust growth rate of unreleased instances, when growing."""
    oldest_age: float | None = None
    """Seconds since the oldest live instance was created."""
    sites: list[dict[str, Any]] = field(default_factory=list)
    """Creation sites of live instances, most first (see :func:`live_objects`)."""
    collected_sites: list[dict[str, Any]] = field(default_factory=list)
    """Creation sites of instances collected without release, most first."""
    wall: float = field(default_factory=time.time)
    """When the report was made (``time.time()``)."""
    path: str | None = None
    """Where the report was written, with ``report_dir``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "type": self.type,
            "reasons": list(self.reasons),
            "live": self.live,
            "unreleased": self.unreleased,
            "released": self.released,
            "collected_unreleased": self.collected_unreleased,
            "created": self.created,
            "max_live": self.max_live,
            "growth_per_minute": self.growth_per_minute,
            "oldest_age": self.oldest_age,
            "sites": [dict(s) for s in self.sites],
            "collected_sites": [dict(s) for s in self.collected_sites],
            "wall": self.wall,
            "path": self.path,
        }

    def __str__(self) -> str:
        closed = "none" if self.released == 0 else str(self.released)
        parts = [f"{self.live} live {self.type} ({self.unreleased} unreleased, {closed} released)"]
        if self.sites:
            top = self.sites[0]
            parts.append(f"created at {top['site']} ({top['count']})")
        if self.growth_per_minute is not None:
            parts.append(f"growing {self.growth_per_minute:.0f}/min")
        if self.max_live is not None and self.live > self.max_live:
            parts.append(f"over max_live={self.max_live}")
        if self.collected_unreleased:
            where = f" from {self.collected_sites[0]['site']}" if self.collected_sites else ""
            parts.append(f"{self.collected_unreleased} collected without release{where}")
        lines = [", ".join(parts)]
        lines += [f"  {s['count']:>6}  {s['site']}" for s in self.sites[1:]]
        return "\n".join(lines)


def build_report(
    name: str,
    reasons: Sequence[str],
    growth: float | None = None,
    *,
    registry: TrackingRegistry | None = None,
) -> UnreleasedReport | None:
    """Build the report for tracked type ``name`` now (``None`` if it is not tracked in
    ``registry``, by default the process's)."""
    summary = (registry or default_registry).entry_summary(name)
    if summary is None:
        return None
    return UnreleasedReport(
        type=name,
        reasons=list(reasons),
        live=summary["live"],
        unreleased=summary["unreleased"],
        released=summary["released"],
        collected_unreleased=summary["collected_unreleased"],
        created=summary["created"],
        max_live=summary["max_live"],
        growth_per_minute=None if growth is None else round(growth, 3),
        oldest_age=summary["oldest_age"],
        sites=summary["sites"],
        collected_sites=summary["collected_sites"],
    )


class _TypeState:
    __slots__ = ("collected", "episode", "floors", "growth", "quiet")

    def __init__(self, window: float, collected: int) -> None:
        self.floors = Floors(window)
        self.growth: float | None = None
        self.collected = collected
        self.episode = False
        self.quiet = 0


class TrackingComponent(Component):
    """Judges tracked counts on every sample; sends ``unreleased_objects`` once per episode."""

    name = "tracking"

    def __init__(
        self, track_clients: bool = True, *, registry: TrackingRegistry | None = None
    ) -> None:
        self.registry = registry or default_registry
        """The tracked classes this component judges (the process's unless given)."""
        self.track_clients = track_clients
        """Whether the known clients were switched on by this component."""
        self._states: dict[str, _TypeState] = {}
        self._baseline = {
            name: c.collected_unreleased for name, c in self.registry.counts().items()
        }
        self.reports: deque[UnreleasedReport] = deque(maxlen=20)
        """The last reports sent, newest last."""
        if track_clients:
            self.registry.enable_known_clients()

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        window = WINDOW_SAMPLES * guard.config.interval
        for name, figures in self.registry.counts().items():
            state = self._states.get(name)
            if state is None:
                # Types tracked after the guard started count from zero; older ones from
                # what they had when it started, so old collections are not news.
                start = self._baseline.get(name, 0)
                state = self._states[name] = _TypeState(window, start)
            reasons, growth = self._judge(figures, state, sample.monotonic)
            if reasons:
                state.quiet = 0
                if not state.episode:
                    state.episode = True
                    self._report(guard, name, reasons, growth)
            elif state.episode:
                state.quiet += 1
                if state.quiet >= QUIET_SAMPLES:
                    state.episode = False

    @staticmethod
    def _judge(figures: Counts, state: _TypeState, now: float) -> tuple[list[str], float | None]:
        reasons: list[str] = []
        if figures.max_live is not None and figures.live > figures.max_live:
            reasons.append("max_live")
        # The trend is fitted once per window, when a floor comes in; in between the last
        # judgement holds (a fit on every sample cost 40 us with a few types tracked).
        if state.floors.add(now, float(figures.unreleased)):
            found = state.floors.growth(0.0)
            state.growth = None if found is None or found[1] <= 0 else found[1]
        growth = state.growth
        if growth is not None:
            reasons.append("growing")
        collected = figures.collected_unreleased
        if collected > state.collected:
            reasons.append("collected_unreleased")
        state.collected = collected
        return reasons, growth

    def _report(self, guard: Guard, name: str, reasons: list[str], growth: float | None) -> None:
        report = build_report(name, reasons, growth, registry=self.registry)
        if report is None:
            return
        if guard.config.report_dir:
            report.path = write_report(guard.config.report_dir, "unreleased", report.to_dict())
        self.reports.append(report)
        guard.send(signals.unreleased_objects, report=report)

    def health(self, guard: Guard) -> dict[str, Any]:
        return {
            "unreleased_objects": {
                name: {
                    "live": figures.live,
                    "unreleased": figures.unreleased,
                    "collected_unreleased": figures.collected_unreleased,
                }
                for name, figures in self.registry.counts().items()
                if figures.created
            }
        }

    def after_fork(self, guard: Guard) -> None:
        self._states.clear()

    def close(self, guard: Guard) -> None:
        self._states.clear()
        self.registry.untrack_all()
