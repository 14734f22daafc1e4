"""Relief: real GC and malloc_trim on this process, and the automatic policy's timing."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from typing import Any

import pytest

import runtime_guard
from runtime_guard import Pressure, ReliefResult, signals
from runtime_guard.config import Config
from runtime_guard.guard import Guard
from runtime_guard.probes import RssReader
from runtime_guard.relief import ReliefComponent, malloc_trim_available, trim
from runtime_guard.testing import FakeProbe, ManualClock, make_guard

MiB = 1024 * 1024


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    got: list[tuple[str, dict[str, Any]]] = []

    def on_forced(sender: Any, **payload: Any) -> None:
        got.append(("gc_forced", payload))

    def on_shed(sender: Any, **payload: Any) -> None:
        got.append(("feature_shed", payload))

    signals.gc_forced.connect(on_forced)
    signals.feature_shed.connect(on_shed)
    yield got
    signals.gc_forced.disconnect(on_forced)
    signals.feature_shed.disconnect(on_shed)


@pytest.fixture
def fake() -> Iterator[tuple[Guard, FakeProbe, ManualClock]]:
    probe = FakeProbe()
    guard = make_guard(probe, relief_cooldown=30)
    clock = ManualClock()
    component = guard.component("relief")
    assert isinstance(component, ReliefComponent)
    component.clock = clock
    yield guard, probe, clock
    guard.stop()


def _reliefs(received: list[tuple[str, dict[str, Any]]]) -> list[ReliefResult]:
    return [payload["result"] for kind, payload in received if kind == "gc_forced"]


def test_relieve_collects_cycles_and_reports(received: list[tuple[str, dict[str, Any]]]) -> None:
    """Guard.relieve() runs a full collection that frees unreachable cycles and says so."""
    guard = Guard(Config.from_options({}, environ={}))
    try:

        class Node:
            def __init__(self) -> None:
                self.me = self

        gc.disable()
        try:
            for _ in range(1000):
                Node()
            result = guard.relieve()
        finally:
            gc.enable()
        assert isinstance(result, ReliefResult)
        assert result.collected >= 1000
        assert result.reason == "manual"
        assert result.rss_before > 0 and result.rss_after > 0
        assert result.duration >= result.gc_seconds >= 0
        assert result.trimmed == malloc_trim_available()
        data = result.to_dict()
        json.dumps(data)
        assert data["level"] == "ok" and data["returned"] == result.returned
        assert "collected" in str(result) and "returned" in str(result)
        guard.flush_signals()
        assert _reliefs(received) == [result]
    finally:
        guard.stop()


@pytest.mark.skipif(not malloc_trim_available(), reason="malloc_trim needs glibc")
def test_malloc_trim_returns_freed_small_objects_to_the_os() -> None:
    """After many small objects are freed, RSS stays up until malloc_trim hands it back."""
    rss = RssReader()
    try:
        before = rss.read()
        # 1 KiB objects come from glibc's heap (above pymalloc's 512-byte limit); keeping
        # every 64th alive fragments it the way a long-running server's heap is.
        objects = [b"x" * 1000 + bytes([i % 256]) for i in range(60_000)]
        survivors = objects[::64]
        grown = rss.read() - before
        assert grown > 40 * MiB
        del objects
        gc.collect()
        freed_without_trim = rss.read()
        assert trim()
        after_trim = rss.read()
        assert freed_without_trim - after_trim > grown // 2
        assert len(survivors) > 0
    finally:
        rss.close()


@pytest.mark.skipif(not malloc_trim_available(), reason="malloc_trim needs glibc")
def test_relieve_reports_bytes_returned() -> None:
    """ReliefResult.returned shows the RSS that relief gave back to the OS."""
    guard = Guard(Config.from_options({}, environ={}))
    try:
        objects = [b"y" * 1000 + bytes([i % 256]) for i in range(60_000)]
        survivors = objects[::64]
        del objects
        result = guard.relieve()
        assert result.trimmed
        assert result.returned > 20 * MiB
        assert result.rss_after < result.rss_before
        assert len(survivors) > 0
    finally:
        guard.stop()


def test_policy_relieves_on_entering_elevated_then_once_per_cooldown(
    fake: tuple[Guard, FakeProbe, ManualClock], received: list[tuple[str, dict[str, Any]]]
) -> None:
    """Relief runs on entering ELEVATED, not on every sample, and again after the cool-down."""
    guard, probe, clock = fake
    probe.set_fraction(0.5)
    guard.sample()
    probe.set_fraction(0.75)
    guard.sample()
    for _ in range(5):
        clock.now += 5
        guard.sample()
    clock.now += 6  # 31 s after the first relief
    guard.sample()
    guard.sample()
    guard.flush_signals()
    assert [r.reason for r in _reliefs(received)] == ["pressure", "cooldown"]
    assert all(r.level == Pressure.ELEVATED for r in _reliefs(received))


def test_policy_relieves_at_once_on_a_rise_but_not_on_flapping(
    fake: tuple[Guard, FakeProbe, ManualClock], received: list[tuple[str, dict[str, Any]]]
) -> None:
    """A rise past the level last relieved runs relief at once; falling and rising back waits."""
    guard, probe, clock = fake
    probe.set_fraction(0.75)
    guard.sample()
    clock.now += 1
    probe.set_fraction(0.9)
    guard.sample()
    for fraction in (0.7, 0.9, 0.7, 0.9):  # HIGH -> ELEVATED -> HIGH ... within cool-down
        clock.now += 1
        probe.set_fraction(fraction)
        guard.sample()
    guard.flush_signals()
    assert [r.level for r in _reliefs(received)] == [Pressure.ELEVATED, Pressure.HIGH]


def test_policy_does_nothing_below_its_level_or_when_off(
    received: list[tuple[str, dict[str, Any]]],
) -> None:
    """relief_at moves the starting level and relief=False switches the policy off."""
    for options, fraction in (({"relief_at": "high"}, 0.8), ({"relief": False}, 0.99)):
        probe = FakeProbe()
        guard = make_guard(probe, **options)
        try:
            probe.set_fraction(fraction)
            guard.sample()
            guard.sample()
            guard.flush_signals()
        finally:
            guard.stop()
    assert _reliefs(received) == []


def test_shedding_comes_before_relief_in_the_same_sample(
    fake: tuple[Guard, FakeProbe, ManualClock], received: list[tuple[str, dict[str, Any]]]
) -> None:
    """On a jump to HIGH, features are shed first, then relief collects what they let go."""
    guard, probe, _clock = fake
    runtime_guard.feature("relief-order-test", shed_at="high")
    probe.set_fraction(0.9)
    guard.sample()
    guard.flush_signals()
    kinds = [kind for kind, payload in received]
    assert kinds.index("feature_shed") < kinds.index("gc_forced")


def test_health_shows_the_last_automatic_relief(fake: tuple[Guard, FakeProbe, ManualClock]) -> None:
    """health() carries the last automatic relief, JSON-ready."""
    guard, probe, _clock = fake
    assert guard.health()["last_relief"] is None
    probe.set_fraction(0.75)
    guard.sample()
    last = guard.health()["last_relief"]
    assert last["reason"] == "pressure" and last["level"] == "elevated"
    json.dumps(guard.health())


@pytest.fixture
def relief_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    import runtime_guard.relief as module

    monkeypatch.setattr(module, "_malloc_trim", module._UNSET)
    return module


def test_relief_without_malloc_trim_is_the_collection_alone(
    relief_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the malloc_trim lookup finds nothing (musl, macOS), relief still collects
    garbage, reports trimmed=False with no trim time, and raises nothing."""
    monkeypatch.setattr(relief_module, "_find_malloc_trim", lambda: None)
    guard = Guard(Config.from_options({"relief": False}, environ={}))
    try:
        assert not malloc_trim_available()
        cycles: list[list[Any]] = [[] for _ in range(1000)]
        for cycle in cycles:
            cycle.append(cycle)
        del cycles, cycle
        result = guard.relieve()
    finally:
        guard.stop()
    assert result.trimmed is False and result.trim_seconds == 0.0
    assert result.collected >= 1000
    assert "no malloc_trim" in str(result)
    assert result.to_dict()["trimmed"] is False


def test_malloc_trim_raising_is_logged_once_and_switched_off(
    relief_module: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A malloc_trim that fails is logged once; later reliefs skip it instead of failing."""
    calls: list[int] = []

    def broken(pad: int) -> int:
        calls.append(pad)
        raise OSError("malloc_trim broke")

    monkeypatch.setattr(relief_module, "_find_malloc_trim", lambda: broken)
    guard = Guard(Config.from_options({"relief": False}, environ={}))
    try:
        with caplog.at_level("ERROR", logger="runtime_guard"):
            first, second = guard.relieve(), guard.relieve()
    finally:
        guard.stop()
    assert (first.trimmed, second.trimmed) == (False, False)
    assert calls == [0]
    assert len([r for r in caplog.records if "malloc_trim failed" in r.getMessage()]) == 1
