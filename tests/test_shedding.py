"""Shedding: features, caches and limiters follow pressure; emergency mode."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import cachetools
import pytest

import runtime_guard
from runtime_guard import (
    Pressure,
    enabled,
    feature,
    no_overlap,
    register_cache,
    sheddable,
    shedding,
    signals,
)
from runtime_guard.config import Config
from runtime_guard.guard import Guard
from runtime_guard.probes import RssReader
from runtime_guard.shedding import SheddingComponent
from runtime_guard.testing import FakeProbe, ManualClock, make_guard, reset

MiB = 1024 * 1024
Events = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def events() -> Iterator[Events]:
    got: Events = []
    receivers = []
    for name in ("feature_shed", "feature_restored", "restart_requested", "gc_forced"):

        def receiver(sender: Any, _name: str = name, **payload: Any) -> None:
            got.append((_name, payload))

        getattr(signals, name).connect(receiver)
        receivers.append((name, receiver))
    yield got
    for name, receiver in receivers:
        getattr(signals, name).disconnect(receiver)


@pytest.fixture
def fake() -> Iterator[tuple[Guard, FakeProbe]]:
    probe = FakeProbe()
    guard = make_guard(probe, relief=False)
    yield guard, probe
    guard.stop()


def _at(guard: Guard, probe: FakeProbe, fraction: float) -> Pressure:
    probe.set_fraction(fraction)
    return guard.sample().pressure


def _kinds(guard: Guard, events: Events) -> list[tuple[str, str]]:
    guard.flush_signals()
    return [(kind, payload["feature"].name) for kind, payload in events if "feature" in payload]


def test_without_a_guard_nothing_is_shed() -> None:
    """Declared features, unknown names and sheddable functions all run with no guard."""
    feature("ws", shed_at="elevated")

    @sheddable("reports", fallback="fallback")
    def report() -> str:
        return "full"

    assert enabled("ws")
    assert enabled("never-declared")
    assert report() == "full"


def test_feature_is_shed_at_its_level_and_restored_with_hysteresis(
    fake: tuple[Guard, FakeProbe], events: Events
) -> None:
    """A HIGH feature goes off at HIGH and comes back only once usage is hysteresis below."""
    guard, probe = fake
    calls: list[str] = []
    ws = feature(
        "websockets", on_shed=lambda: calls.append("shed"), on_restore=lambda: calls.append("on")
    )
    assert _at(guard, probe, 0.80) == Pressure.ELEVATED
    assert enabled("websockets") and ws.enabled
    assert _at(guard, probe, 0.86) == Pressure.HIGH
    assert not enabled("websockets") and not ws.enabled
    assert calls == ["shed"]
    assert _at(guard, probe, 0.83) == Pressure.HIGH  # within hysteresis: still shed
    assert not enabled("websockets")
    assert _at(guard, probe, 0.79) == Pressure.ELEVATED
    assert enabled("websockets")
    assert calls == ["shed", "on"]
    guard.flush_signals()
    assert [(kind, p["feature"], p["level"]) for kind, p in events] == [
        ("feature_shed", ws, Pressure.HIGH),
        ("feature_restored", ws, Pressure.ELEVATED),
    ]
    assert ws.shed_count == 1


def test_lower_levels_shed_first_and_come_back_last(
    fake: tuple[Guard, FakeProbe], events: Events
) -> None:
    """On a jump to CRITICAL, lower levels' features go first and come back last."""
    guard, probe = fake
    feature("c", shed_at="critical")
    feature("h", shed_at="high")
    feature("e", shed_at="elevated")
    _at(guard, probe, 0.99)
    _at(guard, probe, 0.1)
    assert _kinds(guard, events) == [
        ("feature_shed", "e"),
        ("feature_shed", "h"),
        ("feature_shed", "c"),
        ("feature_restored", "c"),
        ("feature_restored", "h"),
        ("feature_restored", "e"),
    ]


def test_feature_declared_under_pressure_starts_shed(fake: tuple[Guard, FakeProbe]) -> None:
    """A feature declared while pressure is already at its level is shed at once."""
    guard, probe = fake
    _at(guard, probe, 0.9)
    feature("late", shed_at="high")
    feature("later", shed_at="critical")
    assert not enabled("late")
    assert enabled("later")


def test_sheddable_returns_the_fallback_while_shed(fake: tuple[Guard, FakeProbe]) -> None:
    """A shed function's body is skipped: a value fallback is returned, a callable one called."""
    guard, probe = fake
    ran: list[str] = []

    @sheddable("analytics", fallback=None)
    def track(event: str) -> str:
        ran.append(event)
        return "tracked"

    @sheddable("heavy-report", shed_at="critical", fallback=lambda n: f"summary of {n}")
    def report(n: int) -> str:
        return f"full report of {n}"

    assert track("a") == "tracked" and report(3) == "full report of 3"
    _at(guard, probe, 0.99)
    assert track("b") is None
    assert report(3) == "summary of 3"
    assert ran == ["a"]
    _at(guard, probe, 0.1)
    assert track("c") == "tracked"


@pytest.mark.asyncio
async def test_async_sheddable_awaits_the_fallback(fake: tuple[Guard, FakeProbe]) -> None:
    """An async sheddable function awaits an async fallback and returns a plain one."""
    guard, probe = fake

    async def cheap(user: str) -> str:
        return f"cached page for {user}"

    @sheddable("recommendations", fallback=cheap)
    async def recommend(user: str) -> str:
        await asyncio.sleep(0)
        return f"fresh page for {user}"

    @sheddable("recommendations")
    async def extra() -> str:
        return "extra"

    assert await recommend("ann") == "fresh page for ann"
    _at(guard, probe, 0.9)
    assert await recommend("ann") == "cached page for ann"
    assert await extra() is None


def test_emergency_option_sheds_everything_and_clears_caches(events: Events) -> None:
    """emergency=True sheds every feature and clears every cache before any sample."""
    feature("a", shed_at="critical")
    feature("b", shed_at="elevated")
    cache = register_cache({"k": "v"}, shed_at="critical", name="big")
    lim = runtime_guard.limiter("jobs", 8, at={"high": 4, "critical": 2})
    guard = make_guard(FakeProbe(), emergency=True, relief=False)
    try:
        assert not enabled("a") and not enabled("b")
        assert cache == {}
        assert lim.capacity == 2
        assert guard.health()["emergency"] is True
        guard.set_emergency(False)
        assert enabled("a") and enabled("b")
        assert lim.capacity == 8
        assert sorted(_kinds(guard, events)) == [
            ("feature_restored", "a"),
            ("feature_restored", "b"),
            ("feature_shed", "a"),
            ("feature_shed", "b"),
        ]
        guard.set_emergency(True)
        assert not enabled("a")
    finally:
        guard.stop()
    assert enabled("a"), "stopping the guard restores what it shed"


def test_emergency_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """RUNTIME_GUARD_EMERGENCY=1 makes install() start with features shed."""
    reset()  # features another test module declared at import are not this test's
    monkeypatch.setenv("RUNTIME_GUARD_EMERGENCY", "1")
    feature("websockets")
    guard = runtime_guard.install(interval=60)
    assert not enabled("websockets")
    assert guard.health()["shed_features"] == ["websockets"]
    assert guard.health()["status"] == "degraded"
    runtime_guard.uninstall()
    assert enabled("websockets")


def test_set_emergency_at_run_time_overrides_pressure(fake: tuple[Guard, FakeProbe]) -> None:
    """An operator's switch sheds at OK; switched off, features follow pressure again."""
    guard, probe = fake
    feature("x", shed_at="high")
    _at(guard, probe, 0.1)
    guard.set_emergency(True)
    assert not enabled("x")
    _at(guard, probe, 0.2)
    assert not enabled("x"), "a sample at OK does not undo emergency mode"
    _at(guard, probe, 0.9)
    guard.set_emergency(False)
    assert not enabled("x"), "still HIGH, so still shed"
    _at(guard, probe, 0.1)
    assert enabled("x")


def test_caches_are_cleared_when_their_level_is_reached(fake: tuple[Guard, FakeProbe]) -> None:
    """dicts, lru_cache functions and cachetools caches are cleared at their level, once."""
    guard, probe = fake
    plain = register_cache({i: str(i) for i in range(1000)}, name="plain")

    @functools.lru_cache(maxsize=1024)
    def square(n: int) -> int:
        return n * n

    register_cache(square, shed_at="critical")
    ttl: cachetools.TTLCache[int, int] = cachetools.TTLCache(maxsize=100, ttl=600)
    register_cache(ttl, shed_at="elevated")
    ttl.update({i: i for i in range(50)})
    for n in range(100):
        square(n)
    _at(guard, probe, 0.75)
    assert len(ttl) == 0 and len(plain) == 1000
    ttl.update({i: i for i in range(50)})
    _at(guard, probe, 0.9)
    assert plain == {} and len(ttl) == 50, "ELEVATED caches are not cleared again at HIGH"
    assert square.cache_info().currsize == 100
    _at(guard, probe, 0.99)
    assert square.cache_info().currsize == 0
    caches = guard.health()["caches"]
    assert caches["plain"]["last_cleared"]["entries"] == 1000
    assert caches["plain"]["last_cleared"]["freed_blocks"] > 1000
    assert caches["plain"]["cleared"] == 1
    assert caches[square.__qualname__]["last_cleared"]["level"] == "critical"
    json.dumps(caches)


def test_register_cache_rejects_what_cannot_be_cleared() -> None:
    """An object without clear() or cache_clear() is refused at registration."""
    with pytest.raises(TypeError, match="clear"):
        register_cache(object())
    with pytest.raises(ValueError, match="shed_at"):
        register_cache({}, shed_at="ok")


def test_caches_are_held_weakly_where_possible(fake: tuple[Guard, FakeProbe]) -> None:
    """Registering a per-instance cache does not keep it alive."""
    guard, probe = fake
    cache: cachetools.LRUCache[int, int] = cachetools.LRUCache(maxsize=10)
    register_cache(cache, name="instance")
    assert "instance" in guard.health()["caches"]
    del cache
    gc.collect()
    _at(guard, probe, 0.9)
    assert "instance" not in guard.health()["caches"]


def test_limiter_capacity_follows_pressure(fake: tuple[Guard, FakeProbe]) -> None:
    """A limiter narrows at HIGH and CRITICAL and widens again as pressure falls."""
    guard, probe = fake
    jobs = runtime_guard.limiter("jobs", 10, at={"high": 3, "critical": 1})
    _at(guard, probe, 0.9)
    assert jobs.capacity == 3
    _at(guard, probe, 0.99)
    assert jobs.capacity == 1
    assert guard.health()["limiters"]["jobs"] == {
        "limit": 10,
        "capacity": 1,
        "holders": 0,
        "waiters": 0,
    }
    _at(guard, probe, 0.5)
    assert jobs.capacity == 10


@pytest.fixture
def clocked() -> Iterator[tuple[Guard, FakeProbe, ManualClock]]:
    probe = FakeProbe()
    guard = make_guard(probe, relief=False)
    clock = ManualClock(50.0)
    component = guard.component("shedding")
    assert isinstance(component, SheddingComponent)
    component.clock = clock
    yield guard, probe, clock
    guard.stop()


def test_a_failing_callback_does_not_stop_shedding(
    fake: tuple[Guard, FakeProbe], caplog: pytest.LogCaptureFixture
) -> None:
    """A raising on_shed is logged and the other features are still shed."""
    guard, probe = fake

    def broken() -> None:
        raise RuntimeError("boom")

    feature("a", shed_at="high", on_shed=broken)
    feature("b", shed_at="high")
    with caplog.at_level(logging.ERROR, logger="runtime_guard"):
        _at(guard, probe, 0.9)
    assert not enabled("a") and not enabled("b")
    assert any("on_shed" in r.getMessage() for r in caplog.records)
    assert guard.component("shedding") is not None


def test_features_share_one_name_across_declarations(fake: tuple[Guard, FakeProbe]) -> None:
    """Declaring a name again returns the same Feature with the new level."""
    first = feature("ws", shed_at="critical")
    again = feature("ws", shed_at="high")
    assert first is again and first.shed_at == Pressure.HIGH
    with pytest.raises(ValueError, match="shed_at"):
        feature("ws", shed_at="nonsense")


def test_real_pressure_sheds_clears_narrows_and_restores(events: Events) -> None:
    """Real allocations up to HIGH shed, clear and narrow; freeing them restores."""
    rss0 = RssReader().read()
    # The budget puts HIGH about 64 MiB above what the process uses now; memory_limit is
    # set far away so only this process's own RSS counts, not its neighbours'.
    budget = int((rss0 + 64 * MiB) / 0.85)
    guard = Guard(
        Config.from_options(
            {"process_limit": budget, "memory_limit": "1TiB", "relief": False}, environ={}
        )
    )
    from runtime_guard._install import attach_components

    attach_components(guard)
    try:
        ws = feature("websockets", shed_at="high")
        cache = register_cache({i: str(i) * 10 for i in range(50_000)}, name="pages")
        jobs = runtime_guard.limiter("jobs", 16, at={"high": 4, "critical": 1})
        assert guard.sample().pressure < Pressure.HIGH
        chunks: list[bytes] = []
        level = Pressure.OK
        for _ in range(64):  # at most 256 MiB
            chunks.append(b"\x01" * (4 * MiB))
            level = guard.sample().pressure
            if level >= Pressure.HIGH:
                break
        assert level == Pressure.HIGH
        assert not enabled("websockets") and not ws.enabled
        assert cache == {}
        assert jobs.capacity == 4
        del chunks
        guard.relieve()  # what the relief policy would do; returns heap-held pages too
        assert guard.sample().pressure < Pressure.HIGH
        assert enabled("websockets")
        assert jobs.capacity == 16
        guard.flush_signals()
        assert [kind for kind, _ in events if kind.startswith("feature")] == [
            "feature_shed",
            "feature_restored",
        ]
    finally:
        guard.stop()


def test_a_flapping_feature_is_held_shed_longer_each_time(
    clocked: tuple[Guard, FakeProbe, ManualClock], events: Events
) -> None:
    """A feature shed again soon after its restore stays shed for a growing hold, not a flap."""
    guard, probe, clock = clocked
    ws = feature("websockets")
    _at(guard, probe, 0.86)
    _at(guard, probe, 0.70)
    assert ws.enabled  # the first restore is immediate
    clock.now += 5
    _at(guard, probe, 0.86)  # its own footprint pushed usage straight back: a flap
    _at(guard, probe, 0.70)
    assert not ws.enabled
    assert ws.hold == shedding.FIRST_HOLD
    clock.now += shedding.FIRST_HOLD - 1
    _at(guard, probe, 0.70)
    assert not ws.enabled
    clock.now += 2
    _at(guard, probe, 0.70)  # same level: the held restore still happens
    assert ws.enabled
    clock.now += 5
    _at(guard, probe, 0.86)
    assert ws.hold == 2 * shedding.FIRST_HOLD
    clock.now += shedding.FLAP_WINDOW + 2 * shedding.FIRST_HOLD
    _at(guard, probe, 0.70)
    assert ws.enabled
    clock.now += shedding.FLAP_WINDOW + 1
    _at(guard, probe, 0.86)  # long after its restore: not a flap, no hold
    assert ws.hold == 0
    assert [kind for kind, _ in _kinds(guard, events)] == [
        "feature_shed",
        "feature_restored",
        "feature_shed",
        "feature_restored",
        "feature_shed",
        "feature_restored",
        "feature_shed",
    ]


def test_64_threads_and_1000_tasks_while_pressure_moves_through_every_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a running guard whose pressure a driver thread moves through all levels, 64
    threads and 1,000 asyncio tasks using enabled(), a limiter and no_overlap see no
    exception, never enter a limiter above the capacity in force, never run a no_overlap
    function twice at once, and all finish (no deadlock)."""
    probe = FakeProbe()
    guard = make_guard(probe, interval=0.005, relief=False)
    feature("hardening-extras", shed_at="high")
    lim = runtime_guard.limiter("hardening-jobs", 8, {"elevated": 4, "high": 2, "critical": 1})
    log_lock = threading.Lock()
    capacities = [lim.capacity]
    inside = [0]
    errors: list[str] = []
    seen_enabled: set[bool] = set()
    original_set_capacity = lim.set_capacity

    def recorded_set_capacity(capacity: int) -> None:
        with log_lock:
            capacities.append(max(capacity, 0))
            original_set_capacity(capacity)

    monkeypatch.setattr(lim, "set_capacity", recorded_set_capacity)

    def entered(start: int) -> None:
        with log_lock:
            inside[0] += 1
            allowed = max(capacities[start:])
            if inside[0] > allowed:
                errors.append(f"{inside[0]} inside a limiter whose capacity was {allowed}")

    def left() -> None:
        with log_lock:
            inside[0] -= 1

    running = {"sync": 0, "async": 0}

    def overlap_enter(kind: str) -> None:
        with log_lock:
            running[kind] += 1
            if running[kind] > 1:
                errors.append(f"two {kind} no_overlap calls at once")

    def overlap_leave(kind: str) -> None:
        with log_lock:
            running[kind] -= 1

    @no_overlap(name="hardening-sync")
    def job() -> None:
        overlap_enter("sync")
        time.sleep(0)
        overlap_leave("sync")

    @no_overlap(name="hardening-async")
    async def async_job() -> None:
        overlap_enter("async")
        await asyncio.sleep(0)
        overlap_leave("async")

    def thread_worker() -> None:
        try:
            for _ in range(40):
                seen_enabled.add(enabled("hardening-extras"))
                start = len(capacities) - 1
                with lim:
                    entered(start)
                    time.sleep(0)
                    left()
                job()
        except Exception as exc:
            errors.append(f"thread: {exc!r}")

    async def task_worker() -> None:
        try:
            for _ in range(4):
                seen_enabled.add(enabled("hardening-extras"))
                start = len(capacities) - 1
                async with lim:
                    entered(start)
                    await asyncio.sleep(0)
                    left()
                await async_job()
        except Exception as exc:
            errors.append(f"task: {exc!r}")

    async def all_tasks() -> None:
        await asyncio.gather(*(task_worker() for _ in range(1000)))

    done = threading.Event()
    levels_seen: set[Pressure] = set()

    def driver() -> None:
        fractions = [0.1, 0.75, 0.9, 0.97, 0.9, 0.75, 0.5, 0.1]
        try:
            while not done.is_set():
                for fraction in fractions:
                    probe.set_fraction(fraction)
                    levels_seen.add(guard.sample().pressure)
                    time.sleep(0.002)
        except Exception as exc:
            errors.append(f"driver: {exc!r}")

    guard.start()
    moving = threading.Thread(target=driver, name="pressure-driver")
    moving.start()
    workers = [threading.Thread(target=thread_worker) for _ in range(64)]
    workers.append(threading.Thread(target=lambda: asyncio.run(all_tasks())))
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        stuck = [w for w in workers if w.is_alive()]
    finally:
        done.set()
        moving.join(30)
        guard.stop()
    assert not stuck, f"{len(stuck)} workers deadlocked: {lim!r}"
    assert not moving.is_alive()
    assert errors == []
    assert levels_seen == set(Pressure)
    assert seen_enabled == {True, False}
    assert lim.holders == 0 and lim.waiters == 0
