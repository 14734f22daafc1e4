"""OpenTelemetry metrics of the guard: the Prometheus figures as observable instruments.

::

    from runtime_guard.integrations.opentelemetry import install_metrics

    install_metrics()                # through the global MeterProvider, set before or after
    install_metrics(meter_provider)  # or a provider of your own

Every instrument is observable: its callback reads the guard's figures when the SDK
collects (every export interval), so sampling costs nothing extra. Names follow
OpenTelemetry's semantic conventions where they define the figure (``process.memory.usage``
is the RSS, ``process.memory.virtual``, ``cpython.gc.collections``,
``cpython.gc.collected_objects``, ``cpython.gc.uncollectable_objects`` per
``cpython.gc.generation``); the rest are ``runtime_guard.*``. Each worker of a server
exports its own: give the ``MeterProvider`` a resource that tells them apart (the SDK's
``ProcessResourceDetector`` adds ``process.pid``).
"""

from __future__ import annotations

import gc
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psutil

from runtime_guard._current import get_guard
from runtime_guard.guard import Guard
from runtime_guard.integrations._extras import missing_extra
from runtime_guard.integrations._figures import Figures, count_events, figures, tally

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("opentelemetry", "opentelemetry-api", "otel") from exc

__all__ = ["INSTRUMENTS", "METER_NAME", "install_metrics"]

METER_NAME = "runtime_guard"
"""The instrumentation scope of every instrument."""

Callback = Callable[[CallbackOptions], Iterable[Observation]]


class _Reader:
    """Reads the figures of ``guard`` (else the process-wide guard) once per sample.

    The callbacks of one collection run one after the other: they share one reading of
    the figures (a ``health()`` call) as long as no new sample was taken meanwhile.
    """

    def __init__(self, guard: Guard | None) -> None:
        self.guard = guard
        self._lock = threading.Lock()
        self._key: tuple[int, object] | None = None
        self._figures: Figures | None = None

    def current(self) -> Figures | None:
        guard = self.guard or get_guard()
        if guard is None:
            return None
        with self._lock:
            key = (id(guard), guard.history.latest())
            if self._figures is None or key != self._key:
                self._figures = figures(guard)
                self._key = (id(guard), guard.history.latest())
            return self._figures

    def gauge(self, read: Callable[[Figures], float]) -> Callback:
        def callback(options: CallbackOptions) -> Iterator[Observation]:
            found = self.current()
            if found is not None:
                yield Observation(read(found))

        return callback

    def finite(self, read: Callable[[Figures], float]) -> Callback:
        """As :meth:`gauge`, with no observation while the figure is infinite (Prometheus
        exports +Inf; an OpenTelemetry back end may refuse it)."""

        def callback(options: CallbackOptions) -> Iterator[Observation]:
            found = self.current()
            value = None if found is None else read(found)
            if value is not None and math.isfinite(value):
                yield Observation(value)

        return callback

    def by(self, read: Callable[[Figures], dict[str, float]], attribute: str) -> Callback:
        def callback(options: CallbackOptions) -> Iterator[Observation]:
            found = self.current()
            if found is not None:
                for key, value in sorted(read(found).items()):
                    yield Observation(value, {attribute: key})

        return callback


def _counted(read: Callable[[], int]) -> Callback:
    """Events counted since the process started, read live (not per sample)."""

    def callback(options: CallbackOptions) -> Iterator[Observation]:
        yield Observation(read())

    return callback


def _virtual(options: CallbackOptions) -> Iterator[Observation]:
    yield Observation(psutil.Process().memory_info().vms)


def _gc_stat(key: str) -> Callback:
    def callback(options: CallbackOptions) -> Iterator[Observation]:
        for generation, stats in enumerate(gc.get_stats()):
            yield Observation(stats.get(key, 0), {"cpython.gc.generation": generation})

    return callback


INSTRUMENTS: tuple[tuple[str, str, str, str], ...] = (
    ("process.memory.usage", "up_down_counter", "By", "The amount of physical memory in use."),
    ("process.memory.virtual", "up_down_counter", "By", "The amount of committed virtual memory."),
    (
        "cpython.gc.collections",
        "counter",
        "{collection}",
        "The number of times a generation was collected since interpreter start.",
    ),
    (
        "cpython.gc.collected_objects",
        "counter",
        "{object}",
        "The total number of objects collected inside a generation since interpreter start.",
    ),
    (
        "cpython.gc.uncollectable_objects",
        "counter",
        "{object}",
        "The total number of objects which were found to be uncollectable inside a "
        "generation since interpreter start.",
    ),
    (
        "runtime_guard.memory.usage",
        "up_down_counter",
        "By",
        "Memory counted against the limit (cgroup working set or RSS).",
    ),
    ("runtime_guard.memory.limit", "up_down_counter", "By", "The limit usage is measured against."),
    (
        "runtime_guard.memory.utilization",
        "gauge",
        "1",
        "Usage as a fraction of the limit (the one pressure is judged on).",
    ),
    (
        "runtime_guard.pressure.level",
        "gauge",
        "1",
        "Pressure level: 0 ok, 1 elevated, 2 high, 3 critical.",
    ),
    (
        "runtime_guard.leak.rate",
        "gauge",
        "By/s",
        "Robust growth rate of usage over the last five minutes.",
    ),
    ("runtime_guard.leaks.suspected", "gauge", "{leak}", "Growth leaks currently suspected."),
    (
        "runtime_guard.recycle.pending",
        "gauge",
        "1",
        "1 while a recycle is due in this worker's container (see health()).",
    ),
    (
        "runtime_guard.memory.time_to_limit",
        "gauge",
        "s",
        "Predicted seconds until usage reaches the limit (no point while it is not growing).",
    ),
    (
        "runtime_guard.objects.unreleased",
        "gauge",
        "{object}",
        "Live tracked objects piling up unreleased, by runtime_guard.object.type.",
    ),
    (
        "runtime_guard.feature.shed",
        "gauge",
        "1",
        "1 while the feature (runtime_guard.feature) is shed.",
    ),
    ("runtime_guard.gc.pause", "counter", "s", "Seconds spent in garbage collection."),
    ("runtime_guard.relief.count", "counter", "{relief}", "Relief runs (full GC, malloc_trim)."),
    ("runtime_guard.feature.sheds", "counter", "{shed}", "Times a feature was shed."),
    (
        "runtime_guard.recycles",
        "counter",
        "{recycle}",
        "Recycles of this worker asked for (restart_requested).",
    ),
)
"""``(name, kind, unit, description)`` of every instrument, in the order they are made."""


def _callbacks(reader: _Reader) -> dict[str, Callback]:
    return {
        "process.memory.usage": reader.gauge(lambda f: f.rss),
        "process.memory.virtual": _virtual,
        "cpython.gc.collections": _gc_stat("collections"),
        "cpython.gc.collected_objects": _gc_stat("collected"),
        "cpython.gc.uncollectable_objects": _gc_stat("uncollectable"),
        "runtime_guard.memory.usage": reader.gauge(lambda f: f.usage),
        "runtime_guard.memory.limit": reader.gauge(lambda f: f.limit),
        "runtime_guard.memory.utilization": reader.gauge(lambda f: f.usage_ratio),
        "runtime_guard.pressure.level": reader.gauge(lambda f: f.pressure),
        "runtime_guard.leak.rate": reader.gauge(lambda f: f.leak_rate),
        "runtime_guard.leaks.suspected": reader.gauge(lambda f: f.suspected_leaks),
        "runtime_guard.recycle.pending": reader.gauge(lambda f: int(f.recycle_pending)),
        "runtime_guard.memory.time_to_limit": reader.finite(lambda f: f.seconds_to_limit),
        "runtime_guard.objects.unreleased": reader.by(
            lambda f: dict(f.unreleased), "runtime_guard.object.type"
        ),
        "runtime_guard.feature.shed": reader.by(
            lambda f: dict.fromkeys(f.shed_features, 1), "runtime_guard.feature"
        ),
        "runtime_guard.gc.pause": reader.gauge(lambda f: f.gc_pause),
        "runtime_guard.relief.count": _counted(lambda: tally.relief),
        "runtime_guard.feature.sheds": _counted(lambda: tally.shed),
        "runtime_guard.recycles": _counted(lambda: tally.recycles),
    }


_install_lock = threading.Lock()
_meters: weakref.WeakKeyDictionary[MeterProvider, Meter] = weakref.WeakKeyDictionary()


def install_metrics(
    meter_provider: MeterProvider | None = None, *, guard: Guard | None = None
) -> Meter:
    """Create the guard's observable instruments on ``meter_provider`` (default: the global
    one); idempotent per provider. Returns the meter.

    ``guard`` defaults to the process-wide guard at each collection; with none installed
    the guard's instruments observe nothing (``process.memory.virtual`` and the
    ``cpython.gc.*`` ones, which need no guard, still do).
    """
    provider = meter_provider or metrics.get_meter_provider()
    with _install_lock:
        meter = _meters.get(provider)
        if meter is not None:
            return meter
        count_events()
        from runtime_guard._version import __version__

        meter = provider.get_meter(METER_NAME, __version__)
        callbacks = _callbacks(_Reader(guard))
        make: dict[str, Any] = {
            "counter": meter.create_observable_counter,
            "up_down_counter": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }
        for name, kind, unit, description in INSTRUMENTS:
            make[kind](name, callbacks=[callbacks[name]], unit=unit, description=description)
        _meters[provider] = meter
        return meter
