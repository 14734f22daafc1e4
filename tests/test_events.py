"""The guard's events as structured log records: one per event, fields in extra, levels by
severity; read through a real JSON formatter and through structlog."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import reportdata  # tests/: real report objects
import structlog
from pythonjsonlogger.json import JsonFormatter

from runtime_guard import shedding, signals
from runtime_guard.events import FIELDS_ATTR, record
from runtime_guard.guard import Guard
from runtime_guard.integrations._recycle import attach_recycler
from runtime_guard.testing import FakeProbe, ManualClock, make_guard
from runtime_guard.tracking.component import UnreleasedReport

LOGGER = logging.getLogger("runtime_guard")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What a JSON log pipeline receives from the guard: one JSON object per line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))
    LOGGER.addHandler(handler)
    old_level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    yield stream
    LOGGER.removeHandler(handler)
    LOGGER.setLevel(old_level)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def unreleased_report() -> UnreleasedReport:
    return UnreleasedReport(
        type="redis.Redis",
        reasons=["growing"],
        live=412,
        unreleased=410,
        released=2,
        collected_unreleased=0,
        created=412,
        growth_per_minute=120.0,
        sites=[{"site": "/srv/app/cache.py:17", "count": 410}],
    )


def _drive(guard: Guard, probe: FakeProbe, clock: ManualClock) -> None:
    """OK -> ELEVATED (relief) -> HIGH (shed) -> CRITICAL (recycle pending, restart) -> OK
    (restore)."""
    shedding.feature("events-test-feature", shed_at="high")
    for fraction in (0.1, 0.75, 0.9, 0.99):
        probe.set_fraction(fraction)
        guard.sample()
        clock.now += 1
    clock.now += 5
    guard.sample()
    probe.set_fraction(0.1)
    clock.now += 60
    guard.sample()


def test_every_event_is_one_json_record_with_its_figures(json_lines: io.StringIO) -> None:
    """Pressure, relief, shed, restart, restore, leak and unreleased objects: each comes out
    once, with a stable ``event``, a level by severity and its figures as fields."""
    probe, clock = FakeProbe(), ManualClock()
    guard = make_guard(probe, clock, restart_after=3, relief_cooldown=3600)
    try:
        _drive(guard, probe, clock)
        guard.send(signals.leak_suspected, report=reportdata.leak_report_object())
        guard.send(signals.unreleased_objects, report=unreleased_report())
        assert guard.flush_signals()
    finally:
        guard.stop()
    records = [r for r in parsed(json_lines) if "event" in r]
    events = [(r["event"], r["levelname"]) for r in records]
    # In the order the guard signalled them: what a sample's components did, then the
    # level it ended at.
    assert events == [
        ("gc_forced", "INFO"),
        ("pressure_changed", "INFO"),
        ("feature_shed", "INFO"),
        ("gc_forced", "INFO"),
        ("pressure_changed", "WARNING"),
        ("gc_forced", "INFO"),
        ("pressure_changed", "WARNING"),
        ("recycle_pending", "ERROR"),
        ("restart_requested", "ERROR"),
        ("feature_restored", "INFO"),
        ("pressure_changed", "INFO"),
        ("leak_suspected", "ERROR"),
        ("unreleased_objects", "ERROR"),
    ]
    by_event = {r["event"]: r[FIELDS_ATTR] for r in records}
    assert by_event["feature_shed"] == {
        "feature": "events-test-feature",
        "level": "high",
        "shed_count": 1,
        "pid": by_event["feature_shed"]["pid"],
    }
    last_pressure = next(r for r in reversed(records) if r["event"] == "pressure_changed")
    assert last_pressure[FIELDS_ATTR]["old"] == "critical"
    assert last_pressure[FIELDS_ATTR]["new"] == "ok"
    assert last_pressure[FIELDS_ATTR]["usage_fraction"] == pytest.approx(0.1)
    leak = by_event["leak_suspected"]
    assert leak["site"] == "/srv/app/views.py:42"
    assert leak["rate_bytes_per_min"] == pytest.approx(2_100_000.0)
    assert leak["holder"].startswith("app.views")
    assert leak["report"]["top_sites"][0]["lineno"] == 42
    pending = by_event["recycle_pending"]
    assert "CRITICAL" in pending["reason"] and pending["seconds_to_limit"] is None
    unreleased = by_event["unreleased_objects"]
    assert (unreleased["type"], unreleased["site"]) == ("redis.Redis", "/srv/app/cache.py:17")
    assert "restart requested: usage stayed CRITICAL" in next(
        r["message"] for r in records if r["event"] == "restart_requested"
    )
    # The message still reads as a sentence: the whole report for a leak.
    leak_message = next(r["message"] for r in records if r["event"] == "leak_suspected")
    assert leak_message.startswith("runtime_guard: leak suspected: Python heap grows")
    # One record per event: no second, unstructured line for the same thing.
    plain = [r["message"] for r in parsed(json_lines) if "event" not in r]
    assert not [m for m in plain if "shed at" in m or "leak suspected" in m]


def test_recycling_is_logged_as_error_events(json_lines: io.StringIO) -> None:
    """A recycle, scheduled and started, is an ERROR record with the server and reason."""
    guard = make_guard(FakeProbe())
    fired: list[str] = []
    try:
        attach_recycler(guard, fired.append, "test", min_lifetime=0, jitter=0)
        guard.send(signals.restart_requested, reason="asked by the test")
        assert guard.flush_signals()
        recycler = guard.component("recycler")
        assert recycler is not None
        timer = recycler._timer  # type: ignore[attr-defined]
        assert timer is not None
        timer.join(10)
    finally:
        guard.stop()
    assert fired == ["asked by the test"]
    records = {r["event"]: r for r in parsed(json_lines) if "event" in r}
    for event in ("recycle_scheduled", "recycle_started"):
        assert records[event]["levelname"] == "ERROR"
        assert records[event][FIELDS_ATTR]["server"] == "test"
        assert records[event][FIELDS_ATTR]["reason"] == "asked by the test"
    assert "recycling test worker pid" in records["recycle_started"]["message"]


def test_structlog_gets_the_event_name_and_the_fields() -> None:
    """Through structlog's ProcessorFormatter and ExtraAdder, the stable name becomes
    structlog's ``event`` and the figures a ``runtime_guard`` object."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    LOGGER.addHandler(handler)
    try:
        record("leak_suspected", logging.ERROR, "leak suspected: ...", {"site": "a.py:3"})
    finally:
        LOGGER.removeHandler(handler)
    [line] = stream.getvalue().splitlines()
    data = json.loads(line)
    assert data["event"] == "leak_suspected"
    assert data["level"] == "error"
    assert data[FIELDS_ATTR]["site"] == "a.py:3"


def test_a_broken_handler_or_payload_never_reaches_the_guard(json_lines: io.StringIO) -> None:
    """A handler that raises and a payload no builder understands: the guard samples on,
    the other handlers still get every event."""

    class Raising(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("broken handler")

    broken = Raising()
    LOGGER.addHandler(broken)
    probe = FakeProbe()
    guard = make_guard(probe, relief=False)
    try:
        probe.set_fraction(0.9)
        guard.sample()
        guard.send(signals.leak_suspected, report=object())
        probe.set_fraction(0.1)
        guard.sample()
        assert guard.flush_signals()
    finally:
        LOGGER.removeHandler(broken)
        guard.stop()
    events = [r["event"] for r in parsed(json_lines) if "event" in r]
    assert events == ["pressure_changed", "leak_suspected", "pressure_changed"]


def test_a_stopped_guard_logs_no_more_events(json_lines: io.StringIO) -> None:
    """Closing the event log disconnects it: another guard's events are its own to log."""
    first = make_guard(FakeProbe())
    first.stop()
    probe = FakeProbe()
    second = make_guard(probe, relief=False)
    try:
        probe.set_fraction(0.9)
        second.sample()
        assert second.flush_signals()
    finally:
        second.stop()
    assert [r["event"] for r in parsed(json_lines) if "event" in r] == ["pressure_changed"]
