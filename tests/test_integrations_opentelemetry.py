"""OpenTelemetry: the guard's figures through the real SDK, read in memory and exported
over OTLP/HTTP to a receiver the test runs."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil
import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.semconv._incubating.metrics import cpython_metrics, process_metrics

from runtime_guard import shedding, signals
from runtime_guard.integrations import prometheus
from runtime_guard.integrations.opentelemetry import INSTRUMENTS, install_metrics
from runtime_guard.testing import FakeProbe, make_guard


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], float]]]:
    """``{metric name: [(attributes, value), ...]}`` of one collection."""
    found: dict[str, list[tuple[dict[str, Any], float]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "runtime_guard"
            for metric in scope.metrics:
                found[metric.name] = [
                    (dict(p.attributes or {}), p.value)  # type: ignore[union-attr]
                    for p in metric.data.data_points
                ]
    return found


def only(found: dict[str, list[tuple[dict[str, Any], float]]], name: str) -> float:
    [(_, value)] = found[name]
    return value


def test_the_sdk_reads_the_guards_figures_at_collection() -> None:
    """Every instrument reports; the figures are the guard's at collection time, not at
    install time; shed features and recycles carry through."""
    probe = FakeProbe(limit=1000 * 2**20)
    guard = make_guard(probe)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        assert install_metrics(provider, guard=guard) is install_metrics(provider, guard=guard)
        probe.set_fraction(0.3)
        guard.sample()
        first = points(reader)
        by_label = {"runtime_guard.objects.unreleased", "runtime_guard.feature.shed"}
        # An instrument with one point per type or feature has none while there are none;
        # the time to the limit none while usage does not grow.
        by_label.add("runtime_guard.memory.time_to_limit")
        assert {name for name, _, _, _ in INSTRUMENTS} - set(first) <= by_label
        assert only(first, "runtime_guard.memory.utilization") == pytest.approx(0.3)
        assert only(first, "runtime_guard.pressure.level") == 0
        assert only(first, "runtime_guard.recycle.pending") == 0
        assert "runtime_guard.memory.time_to_limit" not in first
        shedding.feature("otel-test-feature", shed_at="high")
        probe.set_fraction(0.9)
        sample = guard.sample()
        guard.send(signals.restart_requested, reason="asked by the test")
        guard.flush_signals()
        later = points(reader)
        assert only(later, "runtime_guard.memory.usage") == sample.usage
        assert only(later, "runtime_guard.memory.limit") == probe.limit
        assert only(later, "process.memory.usage") == sample.rss
        assert only(later, "runtime_guard.pressure.level") == 2
        assert later["runtime_guard.feature.shed"] == [
            ({"runtime_guard.feature": "otel-test-feature"}, 1)
        ]
        assert only(later, "runtime_guard.recycles") >= 1
        generations = {a["cpython.gc.generation"] for a, _ in later["cpython.gc.collections"]}
        assert generations == {0, 1, 2}
        real = psutil.Process().memory_info()
        assert only(later, "process.memory.virtual") == pytest.approx(real.vms, rel=0.1)
    finally:
        provider.shutdown()
        guard.stop()


def test_names_are_the_semantic_conventions_where_they_exist() -> None:
    """The process.* and cpython.gc.* names and units are OpenTelemetry's own."""
    by_name = {name: (kind, unit) for name, kind, unit, _ in INSTRUMENTS}
    assert by_name[process_metrics.PROCESS_MEMORY_USAGE] == ("up_down_counter", "By")
    assert by_name[process_metrics.PROCESS_MEMORY_VIRTUAL] == ("up_down_counter", "By")
    for name in (
        cpython_metrics.CPYTHON_GC_COLLECTIONS,
        cpython_metrics.CPYTHON_GC_COLLECTED_OBJECTS,
        cpython_metrics.CPYTHON_GC_UNCOLLECTABLE_OBJECTS,
    ):
        assert by_name[name][0] == "counter"
    others = [n for n in by_name if not n.startswith(("process.", "cpython."))]
    assert all(n.startswith("runtime_guard.") for n in others)


def test_every_prometheus_figure_has_an_instrument() -> None:
    """The OpenTelemetry export carries what the Prometheus one does, figure for figure."""
    exported = {name for name, _, _, _ in INSTRUMENTS}
    pairs = {
        "memory_usage_bytes": "runtime_guard.memory.usage",
        "memory_limit_bytes": "runtime_guard.memory.limit",
        "memory_rss_bytes": "process.memory.usage",
        "memory_usage_ratio": "runtime_guard.memory.utilization",
        "pressure_level": "runtime_guard.pressure.level",
        "leak_rate_bytes_per_second": "runtime_guard.leak.rate",
        "suspected_leaks": "runtime_guard.leaks.suspected",
        "unreleased_objects": "runtime_guard.objects.unreleased",
        "feature_shed": "runtime_guard.feature.shed",
        "gc_pause_seconds": "runtime_guard.gc.pause",
        "gc_collections": "cpython.gc.collections",
        "relief": "runtime_guard.relief.count",
        "features_shed": "runtime_guard.feature.sheds",
        "recycles": "runtime_guard.recycles",
        "recycle_pending": "runtime_guard.recycle.pending",
        "seconds_to_limit": "runtime_guard.memory.time_to_limit",
    }
    assert set(pairs) == set(prometheus._HELP)
    assert set(pairs.values()) <= exported


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP metrics endpoint: parses each export and keeps it."""

    received: list[ExportMetricsServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        type(self).received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[ExportMetricsServiceRequest]]]:
    received: list[ExportMetricsServiceRequest] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/metrics", received
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_otlp_export_reaches_a_receiver(
    receiver: tuple[str, list[ExportMetricsServiceRequest]],
) -> None:
    """Through the SDK's OTLP/HTTP exporter the figures arrive as protobuf, with the
    resource that tells the worker apart."""
    endpoint, received = receiver
    probe = FakeProbe(limit=1000 * 2**20)
    guard = make_guard(probe)
    exporter = OTLPMetricExporter(endpoint=endpoint)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    resource = Resource.create({"service.name": "shop", "process.pid": 4242})
    provider = MeterProvider(metric_readers=[reader], resource=resource)
    try:
        install_metrics(provider, guard=guard)
        probe.set_fraction(0.5)
        sample = guard.sample()
        assert provider.force_flush(30_000)
    finally:
        provider.shutdown()
        guard.stop()
    assert received
    metrics: dict[str, Any] = {}
    for request in received:
        for resource_metrics in request.resource_metrics:
            attributes = {a.key: a.value for a in resource_metrics.resource.attributes}
            assert attributes["service.name"].string_value == "shop"
            assert attributes["process.pid"].int_value == 4242
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    metrics[metric.name] = metric
    usage = metrics["runtime_guard.memory.usage"].sum.data_points[0]
    assert usage.as_int == sample.usage
    utilization = metrics["runtime_guard.memory.utilization"].gauge.data_points[0]
    assert utilization.as_double == pytest.approx(0.5)
    assert metrics["process.memory.usage"].unit == "By"
    assert metrics["cpython.gc.collections"].sum.is_monotonic


def test_no_guard_observes_only_what_needs_none() -> None:
    """Without a guard the guard's instruments observe nothing and nothing raises."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        install_metrics(provider)
        found = points(reader)
        assert "runtime_guard.memory.usage" not in found
        assert "cpython.gc.collections" in found
    finally:
        provider.shutdown()
