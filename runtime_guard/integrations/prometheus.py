"""Prometheus metrics of the guard, per process or across gunicorn workers (multiprocess mode).

::

    from runtime_guard.integrations.prometheus import install_metrics, make_wsgi_app

    install_metrics()              # once per process; idempotent
    metrics_app = make_wsgi_app()  # or make_asgi_app(), or metrics_path= on the middleware

In one process a collector reads the guard's figures at scrape time, so sampling costs
nothing extra. With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn, uvicorn ``--workers``),
scrapes read prometheus_client's per-process files instead, so each worker writes its
figures there after every sample (gauges carry a ``pid`` label; the gunicorn hooks mark
dead workers).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime_guard import signals
from runtime_guard._trend import theil_sen, window_minima
from runtime_guard.guard import Guard, get_guard
from runtime_guard.integrations._http import missing_extra, public_health
from runtime_guard.sample import Sample

try:
    import prometheus_client
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("prometheus", "prometheus_client", "prometheus") from exc

__all__ = [
    "Figures",
    "GuardCollector",
    "figures",
    "growth_rate",
    "install_metrics",
    "make_asgi_app",
    "make_wsgi_app",
    "multiprocess_mode",
    "render",
    "scrape_registry",
]

PREFIX = "runtime_guard_"

# The leak rate is the robust slope of usage minima, the same judgement the leak detector
# makes: a burst or one garbage-collection cycle does not move it.
_RATE_HORIZON = 300.0
_RATE_WINDOW = 10.0


def multiprocess_mode() -> bool:
    """Whether prometheus_client runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


@dataclass
class _Tally:
    """Events counted from signals in this process."""

    relief: int = 0
    shed: int = 0


_tally = _Tally()


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
        relief=_tally.relief,
        shed_events=_tally.shed,
        recycle_pending=bool(health.get("recycle_pending")),
        seconds_to_limit=_seconds(health.get("seconds_to_limit")),
    )


def _seconds(value: Any) -> float:
    # +Inf when usage is not closing in on the limit: an alert "< 60" then never fires.
    return float(value) if isinstance(value, (int, float)) else float("inf")


_HELP = {
    "memory_usage_bytes": "Memory counted against the limit (cgroup working set or RSS).",
    "memory_limit_bytes": "The memory limit usage is measured against.",
    "memory_rss_bytes": "Resident set size of the process.",
    "memory_usage_ratio": "Usage as a fraction of the limit (the one pressure is judged on).",
    "pressure_level": "Pressure level: 0 ok, 1 elevated, 2 high, 3 critical.",
    "leak_rate_bytes_per_second": "Robust growth rate of usage over the last five minutes.",
    "suspected_leaks": "Growth leaks currently suspected.",
    "unreleased_objects": "Live tracked objects piling up unreleased, by type.",
    "feature_shed": "1 while the feature is shed.",
    "gc_pause_seconds": "Seconds spent in garbage collection.",
    "gc_collections": "Garbage collections run.",
    "relief": "Relief runs (full GC, malloc_trim).",
    "features_shed": "Times a feature was shed.",
    "recycle_pending": "1 while a recycle is due in this worker's container (see health()).",
    "seconds_to_limit": "Predicted seconds until usage reaches the limit (+Inf: not growing).",
}


class GuardCollector(Collector):
    """Reads the guard's figures at scrape time (single-process mode).

    ``guard`` defaults to the process-wide guard at each scrape; with none installed the
    collector yields nothing.
    """

    def __init__(self, guard: Guard | None = None) -> None:
        self.guard = guard

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        guard = self.guard or get_guard()
        if guard is None:
            return
        f = figures(guard)

        def gauge(name: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, _HELP[name], value=value)

        yield gauge("memory_usage_bytes", f.usage)
        yield gauge("memory_limit_bytes", f.limit)
        yield gauge("memory_rss_bytes", f.rss)
        yield gauge("memory_usage_ratio", f.usage_ratio)
        yield gauge("pressure_level", f.pressure)
        yield gauge("leak_rate_bytes_per_second", f.leak_rate)
        yield gauge("suspected_leaks", f.suspected_leaks)
        yield gauge("recycle_pending", int(f.recycle_pending))
        yield gauge("seconds_to_limit", f.seconds_to_limit)
        unreleased = GaugeMetricFamily(
            PREFIX + "unreleased_objects", _HELP["unreleased_objects"], labels=["type"]
        )
        for type_name, count in sorted(f.unreleased.items()):
            unreleased.add_metric([type_name], count)
        yield unreleased
        shed = GaugeMetricFamily(PREFIX + "feature_shed", _HELP["feature_shed"], labels=["feature"])
        for name in sorted(f.shed_features):
            shed.add_metric([name], 1)
        yield shed
        yield CounterMetricFamily(
            PREFIX + "gc_pause_seconds", _HELP["gc_pause_seconds"], value=f.gc_pause
        )
        yield CounterMetricFamily(
            PREFIX + "gc_collections", _HELP["gc_collections"], value=f.gc_collections
        )
        yield CounterMetricFamily(PREFIX + "relief", _HELP["relief"], value=f.relief)
        yield CounterMetricFamily(
            PREFIX + "features_shed", _HELP["features_shed"], value=f.shed_events
        )


class _MultiprocessExporter:
    """Writes each sample's figures into prometheus_client's per-process files."""

    def __init__(self) -> None:
        def gauge(name: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(
                PREFIX + name, _HELP[name], labels, registry=None, multiprocess_mode="liveall"
            )

        def counter(name: str) -> Counter:
            return Counter(PREFIX + name, _HELP[name], registry=None)

        self.gauges = {
            name: gauge(name)
            for name in (
                "memory_usage_bytes",
                "memory_limit_bytes",
                "memory_rss_bytes",
                "memory_usage_ratio",
                "pressure_level",
                "leak_rate_bytes_per_second",
                "suspected_leaks",
                "recycle_pending",
                "seconds_to_limit",
            )
        }
        self.unreleased = gauge("unreleased_objects", ("type",))
        self.shed = gauge("feature_shed", ("feature",))
        self.gc_pause = counter("gc_pause_seconds")
        self.gc_collections = counter("gc_collections")
        self.relief = counter("relief")
        self.features_shed = counter("features_shed")
        self._pid = -1
        self._last: tuple[float, int] = (0.0, 0)
        self._types: set[str] = set()
        self._features: set[str] = set()

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        if self._pid != os.getpid():  # a fork child starts its own totals
            self._pid = os.getpid()
            self._last = (sample.gc_pause, sample.gc_collections)
            self._types.clear()
            self._features.clear()
        f = figures(guard, sample)
        values = {
            "memory_usage_bytes": f.usage,
            "memory_limit_bytes": f.limit,
            "memory_rss_bytes": f.rss,
            "memory_usage_ratio": f.usage_ratio,
            "pressure_level": f.pressure,
            "leak_rate_bytes_per_second": f.leak_rate,
            "suspected_leaks": f.suspected_leaks,
            "recycle_pending": int(f.recycle_pending),
            "seconds_to_limit": f.seconds_to_limit,
        }
        for name, value in values.items():
            self.gauges[name].set(value)
        pause, collections = self._last
        self.gc_pause.inc(max(0.0, f.gc_pause - pause))
        self.gc_collections.inc(max(0, f.gc_collections - collections))
        self._last = (f.gc_pause, f.gc_collections)
        self._types |= set(f.unreleased)
        for type_name in self._types:
            self.unreleased.labels(type_name).set(f.unreleased.get(type_name, 0))
        self._features |= set(f.shed_features)
        for name in self._features:
            self.shed.labels(name).set(1 if name in f.shed_features else 0)


_install_lock = threading.Lock()
_registered: set[int] = set()
_exporter: _MultiprocessExporter | None = None
_receivers: list[Callable[..., None]] = []


def _count_relief(sender: Any, **_: Any) -> None:
    _tally.relief += 1
    if _exporter is not None:
        _exporter.relief.inc()


def _count_shed(sender: Any, **_: Any) -> None:
    _tally.shed += 1
    if _exporter is not None:
        _exporter.features_shed.inc()


def _export_sample(sender: Any, sample: Sample, **_: Any) -> None:
    if _exporter is not None and isinstance(sender, Guard):
        _exporter.on_sample(sender, sample)


def install_metrics(registry: CollectorRegistry = REGISTRY) -> None:
    """Export the guard's metrics from this process; idempotent, any guard, any time.

    Single-process: registers a :class:`GuardCollector` in ``registry``. Multiprocess mode:
    every guard's samples are written to the multiprocess files (``registry`` is unused:
    scrapes go through :func:`scrape_registry`).
    """
    global _exporter
    with _install_lock:
        if not _receivers:
            signals.gc_forced.connect(_count_relief, weak=False)
            signals.feature_shed.connect(_count_shed, weak=False)
            _receivers.extend((_count_relief, _count_shed))
        if multiprocess_mode():
            if _exporter is None:
                _exporter = _MultiprocessExporter()
                signals.sample_taken.connect(_export_sample, weak=False)
            return
        if id(registry) not in _registered:
            registry.register(GuardCollector())
            _registered.add(id(registry))


def scrape_registry() -> CollectorRegistry:
    """The registry a scrape should read: all workers' files in multiprocess mode."""
    if not multiprocess_mode():
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def render(accept: str | None = None) -> tuple[str, bytes]:
    """``(content type, body)`` of a scrape, in the format the ``Accept`` header asks for."""
    install_metrics()
    encoder, content_type = choose_encoder(accept or "")
    return content_type, encoder(scrape_registry())


def make_wsgi_app() -> Callable[..., Any]:
    """A WSGI app serving the metrics (mount it at ``/metrics``)."""
    install_metrics()
    if not multiprocess_mode():
        return prometheus_client.make_wsgi_app(REGISTRY)

    def app(environ: Mapping[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        content_type, body = render(environ.get("HTTP_ACCEPT"))
        start_response("200 OK", [("Content-Type", content_type)])
        return [body]

    return app


def make_asgi_app() -> Callable[..., Any]:
    """An ASGI app serving the metrics (mount it at ``/metrics``)."""
    install_metrics()
    if not multiprocess_mode():
        return prometheus_client.make_asgi_app(REGISTRY)

    async def app(scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        accept = dict(scope.get("headers", ())).get(b"accept", b"").decode("latin-1")
        content_type, body = render(accept)
        headers = [(b"content-type", content_type.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
