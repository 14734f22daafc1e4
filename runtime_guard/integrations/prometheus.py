"""Prometheus metrics of the guard, per process or across gunicorn workers (multiprocess mode).

::

    from runtime_guard.integrations.prometheus import install_metrics, make_wsgi_app

    install_metrics()              # once per process; idempotent
    metrics_app = make_wsgi_app()  # or make_asgi_app(), or metrics_path= on the middleware

In one process a collector reads the guard's figures at scrape time, so sampling costs
nothing extra. With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn, uvicorn ``--workers``,
uWSGI), scrapes read prometheus_client's per-process files instead, so each worker writes
its figures there after every sample (gauges carry a ``pid`` label). A worker's gauges
leave the scrape when it exits: it marks itself dead at exit, the server integrations mark
the workers they see exit, and every scrape marks dead the processes whose files remain
but which no longer run (a worker killed by the OOM killer runs no exit code).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from runtime_guard import signals
from runtime_guard._container import process_alive
from runtime_guard._current import get_guard
from runtime_guard.guard import Guard
from runtime_guard.integrations._extras import missing_extra
from runtime_guard.integrations._figures import (
    Figures,
    count_events,
    figures,
    growth_rate,
    leak_rate,
    recycle_signals,
)
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
    "leak_rate",
    "make_asgi_app",
    "make_wsgi_app",
    "mark_dead",
    "mark_dead_at_exit",
    "multiprocess_mode",
    "render",
    "resource_metrics",
    "scrape_registry",
    "sweep_dead",
]

_log = logging.getLogger("runtime_guard")

PREFIX = "runtime_guard_"


def multiprocess_mode() -> bool:
    """Whether prometheus_client runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def mark_dead(pid: int | None = None, directory: str | None = None) -> bool:
    """Stop exporting the live gauges of process ``pid`` (default: this one); never raises.

    prometheus_client's ``mark_process_dead``: the process's ``gauge_live*_<pid>.db`` files
    in ``directory`` (default ``PROMETHEUS_MULTIPROC_DIR``) go, its counters stay in the
    sums. Call it for a worker that has exited, or from a worker on its way out. Returns
    whether there was a multiprocess directory and its files were handled.
    """
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return False
    pid = os.getpid() if pid is None else pid
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        return True
    except Exception:
        _log.exception("runtime_guard: could not mark process %d dead for Prometheus", pid)
        return False


# prometheus_client's file name for a live gauge: gauge_<mode>_<pid>.db, mode liveall,
# livesum, livemax, livemin or livemostrecent.
_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def sweep_dead(directory: str | None = None) -> list[int]:
    """Mark dead every process whose live-gauge files remain but which no longer runs.

    For workers that ran no exit code (SIGKILL, the OOM killer) under a supervisor that
    tells nobody (uvicorn ``--workers``, uWSGI). The directory must belong to one server
    in one PID namespace, as prometheus_client requires anyway. Returns the pids marked.
    """
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    pids = {int(m.group(1)) for m in map(_LIVE_FILE.fullmatch, names) if m is not None}
    dead = sorted(pid for pid in pids if not process_alive(pid))
    for pid in dead:
        mark_dead(pid, directory)
    return dead


_exit_hook = threading.Lock()
_exit_hook_registered = False


def _mark_this_process_dead() -> None:
    # Registered once, inherited by forked workers: each marks its own pid at its exit.
    if multiprocess_mode():
        mark_dead(os.getpid())


def mark_dead_at_exit() -> None:
    """Mark this process (and every worker forked from it) dead when it exits normally.

    Idempotent. Exits that run no Python exit code (``os._exit``, SIGKILL) are left to the
    server's own hooks and to :func:`sweep_dead` at the next scrape.
    """
    global _exit_hook_registered
    with _exit_hook:
        if not _exit_hook_registered:
            atexit.register(_mark_this_process_dead)
            _exit_hook_registered = True


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
    "recycles": "Recycles of this worker asked for (restart_requested).",
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
        yield CounterMetricFamily(PREFIX + "recycles", _HELP["recycles"], value=f.recycles)
        yield from resource_metrics(guard)


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
        self.recycles = counter("recycles")
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
    if _exporter is not None:
        _exporter.relief.inc()


def _count_shed(sender: Any, **_: Any) -> None:
    if _exporter is not None:
        _exporter.features_shed.inc()


def _count_recycle(sender: Any, **_: Any) -> None:
    if _exporter is not None:
        _exporter.recycles.inc()


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
    count_events()
    with _install_lock:
        if not _receivers:
            signals.gc_forced.connect(_count_relief, weak=False)
            signals.feature_shed.connect(_count_shed, weak=False)
            for signal in recycle_signals():
                signal.connect(_count_recycle, weak=False)
            _receivers.extend((_count_relief, _count_shed, _count_recycle))
        if multiprocess_mode():
            mark_dead_at_exit()
            if _exporter is None:
                _exporter = _MultiprocessExporter()
                signals.sample_taken.connect(_export_sample, weak=False)
            _install_resource_exporter()
            return
        if id(registry) not in _registered:
            registry.register(GuardCollector())
            _registered.add(id(registry))


class _WrittenFiles:
    """prometheus_client's multiprocess collector, over the files that are written.

    A process that has just started creates its file empty and sizes it a moment later;
    prometheus_client reads such a file as a ``struct.error``, and a file a sweep removes
    between the listing and the read as a ``FileNotFoundError``: a scrape that failed
    whenever a worker was starting or going. Empty files are left out, and a read that
    met either race lists the files again, once.
    """

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Any:
        import glob
        import struct

        from prometheus_client import multiprocess

        for attempt in range(2):
            files = [name for name in glob.glob(os.path.join(self._path, "*.db")) if _written(name)]
            try:
                return multiprocess.MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
            except (struct.error, FileNotFoundError):
                if attempt:
                    raise
        return []


def _written(name: str) -> bool:
    try:
        return os.path.getsize(name) >= 8
    except OSError:
        return False


def scrape_registry() -> CollectorRegistry:
    """The registry a scrape should read: all workers' files in multiprocess mode."""
    if not multiprocess_mode():
        return REGISTRY
    sweep_dead()
    registry = CollectorRegistry()
    registry.register(_WrittenFiles(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
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


# -- resources that run out before memory: pools, threads, tasks, descriptors, stuck work,
# the event loop. Kept apart from the memory figures above; read from the latest sample and
# the components' own state, so a scrape costs no extra health() call.

_RESOURCE_HELP = {
    "threads": "Live Python threads.",
    "asyncio_tasks": "asyncio tasks not yet collected (pending, or done and referenced).",
    "open_fds": "Open file descriptors.",
    "event_loop_lag_seconds": "Worst asyncio event-loop lag since the previous sample.",
    "work_stuck": "Runs with a deadline (no_overlap, limiter, Celery) past it now.",
    "pool_in_use": "Connections checked out of the pool.",
    "pool_size": "Most connections the pool opens (size plus overflow).",
    "pool_overflow": "Connections open beyond the pool's steady size.",
    "pool_waiting": "Requests waiting for a connection of the pool.",
    "pool_held_too_long": "Checkouts held longer than checkout_warn_after.",
    "pool_oldest_checkout_seconds": "Age of the pool's oldest checkout.",
}
_POOL_FIGURES = (
    ("pool_in_use", "in_use"),
    ("pool_size", "size"),
    ("pool_overflow", "overflow"),
    ("pool_waiting", "waiting"),
    ("pool_held_too_long", "held_too_long"),
    ("pool_oldest_checkout_seconds", "oldest_checkout_seconds"),
)


def _resource_values(
    guard: Guard, sample: Sample | None = None
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``(process figures, {pool: figures})`` for the resource metrics."""
    sample = sample or guard.history.latest()
    values: dict[str, float] = {}
    if sample is not None:
        values["threads"] = sample.threads
        values["asyncio_tasks"] = sample.tasks
        if sample.fds >= 0:
            values["open_fds"] = sample.fds
        if sample.loop_lag is not None:
            values["event_loop_lag_seconds"] = sample.loop_lag
    works = getattr(guard.component("stuck"), "registry", None)
    if works is not None:
        values["work_stuck"] = len(works.overdue())
    pools: dict[str, dict[str, float]] = {}
    component = guard.component("pools")
    for name, pool_figures in (getattr(component, "pools", dict)() or {}).items():
        pools[name] = {
            metric: float(pool_figures[key])
            for metric, key in _POOL_FIGURES
            if isinstance(pool_figures.get(key), (int, float)) and pool_figures[key] >= 0
        }
    return values, pools


def resource_metrics(guard: Guard) -> Iterator[Metric]:
    """The resource gauges of ``guard`` (single-process mode)."""
    values, pools = _resource_values(guard)
    for name, value in values.items():
        yield GaugeMetricFamily(PREFIX + name, _RESOURCE_HELP[name], value=value)
    for metric, _ in _POOL_FIGURES:
        family = GaugeMetricFamily(PREFIX + metric, _RESOURCE_HELP[metric], labels=["pool"])
        for pool, pool_figures in sorted(pools.items()):
            if metric in pool_figures:
                family.add_metric([pool], pool_figures[metric])
        yield family


class _ResourceExporter:
    """Writes the resource gauges into prometheus_client's per-process files."""

    def __init__(self) -> None:
        def gauge(name: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(
                PREFIX + name,
                _RESOURCE_HELP[name],
                labels,
                registry=None,
                multiprocess_mode="liveall",
            )

        self.gauges = {
            name: gauge(name)
            for name in (
                "threads",
                "asyncio_tasks",
                "open_fds",
                "event_loop_lag_seconds",
                "work_stuck",
            )
        }
        self.pool_gauges = {metric: gauge(metric, ("pool",)) for metric, _ in _POOL_FIGURES}

    def on_sample(self, sender: Any, sample: Sample, **_: Any) -> None:
        if not isinstance(sender, Guard):
            return
        values, pools = _resource_values(sender, sample)
        for name, value in values.items():
            self.gauges[name].set(value)
        for pool, pool_figures in pools.items():
            for metric, value in pool_figures.items():
                self.pool_gauges[metric].labels(pool).set(value)


_resource_exporter: _ResourceExporter | None = None


def _install_resource_exporter() -> None:
    global _resource_exporter
    if _resource_exporter is None:
        _resource_exporter = _ResourceExporter()
        signals.sample_taken.connect(_resource_exporter.on_sample, weak=False)
