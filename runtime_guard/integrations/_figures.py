"""The figures every metrics exporter publishes (Prometheus, OpenTelemetry), read one way.

A process's figures come from its guard's latest sample and its public health; the events
that have no figure of their own (reliefs, features shed, recycles asked for) are counted
here from the guard's signals, once per process, whichever exporters read them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from blinker import NamedSignal

from runtime_guard import signals
from runtime_guard._trend import theil_sen, window_minima
from runtime_guard.guard import Guard
from runtime_guard.integrations._health import public_health
from runtime_guard.sample import Sample

__all__ = [
    "RECYCLE_SIGNALS",
    "Figures",
    "Tally",
    "count_events",
    "figures",
    "growth_rate",
    "leak_rate",
    "recycle_signals",
    "tally",
]

# The leak rate is the robust slope of usage minima, the same judgement the leak detector
# makes: a burst or one garbage-collection cycle does not move it.
_RATE_HORIZON = 300.0
_RATE_WINDOW = 10.0

# Only restart_requested: every worker of a container sends recycle_pending when a recycle
# is due there, while the one that recycles (or whose host is asked to) sends
# restart_requested, so counting both would count one recycle once per worker.
RECYCLE_SIGNALS = ("restart_requested",)
"""Signals that ask for this worker to be recycled (those this version has are counted)."""


@dataclass
class Tally:
    """Events counted from the guard's signals in this process."""

    relief: int = 0
    shed: int = 0
    recycles: int = 0


tally = Tally()
"""This process's counts; a forked worker starts from its parent's (counters only grow)."""


@dataclass
class Figures:
    """One process's figures, as exported."""

    usage: int
    limit: int
    rss: int
    usage_ratio: float
    pressure: int
    leak_rate: float
    suspected_leaks: int
    unreleased: dict[str, int] = field(default_factory=dict)
    shed_features: list[str] = field(default_factory=list)
    gc_pause: float = 0.0
    gc_collections: int = 0
    relief: int = 0
    shed_events: int = 0
    recycles: int = 0
    recycle_pending: bool = False
    seconds_to_limit: float = float("inf")


def growth_rate(points: list[tuple[float, float]]) -> float:
    """Robust slope of ``(seconds, bytes)`` points: Theil-Sen over per-window minima."""
    if len(points) < 3:
        return 0.0
    minima = window_minima(points, _RATE_WINDOW)
    return theil_sen(minima if len(minima) >= 3 else points)


def leak_rate(guard: Guard) -> float:
    """Bytes per second that usage grows by, over the last five minutes of samples."""
    latest = guard.history.latest()
    if latest is None:
        return 0.0
    recent = guard.history.since(latest.monotonic - _RATE_HORIZON)
    return growth_rate([(s.monotonic, float(s.usage)) for s in recent])


def figures(guard: Guard, sample: Sample | None = None) -> Figures:
    """Collect the figures of ``guard`` (its latest sample and ``health()``)."""
    sample = sample or guard.history.latest() or guard.sample()
    health = public_health(guard.health())
    return Figures(
        usage=sample.usage,
        limit=sample.limit,
        rss=sample.rss,
        usage_ratio=sample.usage_fraction,
        pressure=int(sample.pressure),
        leak_rate=leak_rate(guard),
        suspected_leaks=int(health.get("suspected_leaks", 0)),
        unreleased=dict(health.get("unreleased_objects", {})),
        shed_features=list(health.get("shed_features", [])),
        gc_pause=sample.gc_pause,
        gc_collections=sample.gc_collections,
        relief=tally.relief,
        shed_events=tally.shed,
        recycles=tally.recycles,
        recycle_pending=bool(health.get("recycle_pending")),
        seconds_to_limit=_seconds(health.get("seconds_to_limit")),
    )


def _seconds(value: Any) -> float:
    # +Inf when usage is not closing in on the limit: an alert "< 60" then never fires.
    return float(value) if isinstance(value, (int, float)) else float("inf")


def _count_relief(sender: Any, **_: Any) -> None:
    tally.relief += 1


def _count_shed(sender: Any, **_: Any) -> None:
    tally.shed += 1


def _count_recycle(sender: Any, **_: Any) -> None:
    tally.recycles += 1


_lock = threading.Lock()
_counting = False


def recycle_signals() -> list[NamedSignal]:
    """The signals of :data:`RECYCLE_SIGNALS` this version defines."""
    found = (getattr(signals, name, None) for name in RECYCLE_SIGNALS)
    return [signal for signal in found if isinstance(signal, NamedSignal)]


def count_events() -> None:
    """Start counting reliefs, sheds and recycle requests of every guard (idempotent)."""
    global _counting
    with _lock:
        if _counting:
            return
        signals.gc_forced.connect(_count_relief, weak=False)
        signals.feature_shed.connect(_count_shed, weak=False)
        for signal in recycle_signals():
            signal.connect(_count_recycle, weak=False)
        _counting = True
