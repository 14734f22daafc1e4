"""The recycling policy: predicted time to the limit, one worker at a time, a report each.

Samples are fed to the policy with the times the test chooses (the policy reads only the
samples' clock and its own injectable one); other workers of the container are real
processes whose figures are published in the test's own runtime directory.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import runtime_guard
from runtime_guard import Pressure, signals
from runtime_guard._coordination import Peer
from runtime_guard.config import ConfigError
from runtime_guard.container import ContainerPublisher, draining, read_container
from runtime_guard.guard import Guard
from runtime_guard.integrations._recycle import attach_recycler
from runtime_guard.integrations.wsgi import GuardMiddleware
from runtime_guard.leaks.detector import LeakDetector
from runtime_guard.recycling import (
    LEAST_DRAIN,
    MIN_GROWTH_SHARE,
    Prediction,
    RecyclePolicy,
    choose_victim,
    predict,
    sustained_rate,
)
from runtime_guard.report_html import render_view
from runtime_guard.report_text import render_view_text
from runtime_guard.reports.view import read_view
from runtime_guard.sample import Sample
from runtime_guard.testing import FakeProbe, ManualClock, make_guard

MiB = 1024 * 1024
LIMIT = 200 * MiB


def _pressure(fraction: float) -> Pressure:
    for level, at in ((Pressure.CRITICAL, 0.95), (Pressure.HIGH, 0.85), (Pressure.ELEVATED, 0.7)):
        if fraction >= at:
            return level
    return Pressure.OK


def _sample(t: float, usage: float, rss: float, heap: int = 100_000) -> Sample:
    return Sample(
        monotonic=t,
        wall=time.time(),
        rss=int(rss),
        usage=int(usage),
        limit=LIMIT,
        usage_fraction=usage / LIMIT,
        heap_blocks=heap,
        gc_counts=(0, 0, 0),
        gc_collections=0,
        gc_pause=0.0,
        threads=1,
        pressure=_pressure(usage / LIMIT),
    )


@dataclass
class World:
    """A guard with a fresh policy on a private runtime directory, and what it sent."""

    guard: Guard
    policy: RecyclePolicy
    probe: FakeProbe
    clock: ManualClock
    directory: Path
    stops: list[str] = field(default_factory=list)
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    t: float = 1000.0

    def recycler(self) -> None:
        """Attach a real Recycler whose stop only records the reason."""
        attach_recycler(self.guard, self.stops.append, "test")

    def feed(self, usage: float, rss: float | None = None, seconds: float = 1.0) -> None:
        """One sample ``seconds`` after the last; usage in bytes (RSS follows unless given)."""
        self.t += seconds
        self.clock.now = self.t
        self.probe.usage = int(usage)
        sample = _sample(self.t, usage, usage if rss is None else rss)
        # In the history too, as the sampler would put it: health() reads the latest.
        self.guard.history.append(sample)
        self.policy.on_sample(self.guard, sample)

    def kinds(self) -> list[str]:
        self.guard.flush_signals()
        return [kind for kind, _ in self.sent]


# Each test's container is its own directory (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("container_dir")


def _world(tmp_path: Path, drain: str) -> Iterator[World]:
    probe = FakeProbe(limit=LIMIT)
    guard = make_guard(
        probe, report_dir=str(tmp_path / "reports"), restart_after=30, recycle_drain=drain
    )
    default = guard.component("recycling")
    assert default is not None
    guard.remove_component(default)
    clock = ManualClock(1000.0)
    policy = RecyclePolicy(guard.config, directory=str(tmp_path / "run"), clock=clock)
    guard.add_component(policy)
    found = World(guard, policy, probe, clock, tmp_path / "run")
    receivers = []
    for name in ("recycle_pending", "restart_requested", "gc_forced"):

        def receiver(sender: Any, _name: str = name, **payload: Any) -> None:
            found.sent.append((_name, payload))

        getattr(signals, name).connect(receiver)
        receivers.append((name, receiver))
    yield found
    for name, receiver in receivers:
        getattr(signals, name).disconnect(receiver)
    guard.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A policy with a fixed 10 s drain budget: what the decisions are judged against."""
    yield from _world(tmp_path, "10")


@pytest.fixture
def auto_world(tmp_path: Path) -> Iterator[World]:
    """A policy with the default drain budget, learnt from the container's recycles."""
    yield from _world(tmp_path, "auto")


@pytest.fixture
def neighbour(world: World) -> Iterator[subprocess.Popen[bytes]]:
    """Another live worker process of the same container (publishes nothing by itself)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait(10)


def _publish(directory: Path, pid: int, growth: int, rising: int, started: float = 1.0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    data = {"pid": pid, "started": started, "growth": growth, "rising": rising}
    data["updated"] = time.time()
    (directory / f"{pid}.worker").write_text(json.dumps(data))


def _leak_until(
    world: World,
    stop: Any,
    *,
    start: float = 100 * MiB,
    rate: float = 2 * MiB,
    limit_samples: int = 200,
) -> int:
    """Feed a leak of ``rate`` bytes/s (this worker's RSS grows alike) until ``stop()``."""
    for i in range(limit_samples):
        usage = start + i * rate
        world.feed(usage, rss=40 * MiB + i * rate)
        if stop():
            return i
    raise AssertionError(f"not after {limit_samples} samples: {world.policy.health(world.guard)}")


# -- the prediction -------------------------------------------------------------------------


def test_steady_growth_predicts_the_critical_threshold_and_the_limit() -> None:
    """A steady 2 MiB/s from 100 MiB reaches 95 % of 200 MiB in 45 s and the limit in 50 s."""
    points = [(float(t), 100 * MiB + t * 2 * MiB, 50 * MiB) for t in range(31)]
    found = predict(points, LIMIT, 0.95)
    assert found.rate == pytest.approx(2 * MiB)
    assert found.seconds_to_critical == pytest.approx((190 - 160) / 2, abs=0.1)
    assert found.seconds_to_limit == pytest.approx((200 - 160) / 2, abs=0.1)
    assert found.what == "container"


def test_process_limit_binds_when_it_is_reached_first() -> None:
    """With process_limit, this process's RSS against it predicts too, and the earlier wins."""
    points = [(float(t), 100 * MiB, 50 * MiB + t * MiB) for t in range(31)]
    found = predict(points, LIMIT, 0.95, process_limit=100 * MiB)
    assert found.what == "process"
    assert found.seconds_to_limit == pytest.approx(20, abs=0.1)


@pytest.mark.parametrize(
    "shape",
    ["flat", "spike", "sawtooth", "one step up"],
)
def test_what_is_not_steady_growth_predicts_nothing(shape: str) -> None:
    """A flat line, one spike, a GC sawtooth and a one-off step up predict no time to limit."""
    values = [100 * MiB + (t % 3) * 4096 for t in range(30)]
    if shape == "spike":
        values[20] += 60 * MiB
    elif shape == "sawtooth":
        values = [100 * MiB + (t % 5) * 3 * MiB for t in range(30)]
    elif shape == "one step up":
        values = [v + (40 * MiB if t >= 12 else 0) for t, v in enumerate(values)]
    points = [(float(t), float(v), 50.0 * MiB) for t, v in enumerate(values)]
    assert predict(points, LIMIT, 0.95) == Prediction(None, None, 0.0, "container")


def test_a_fall_starts_the_trend_again() -> None:
    """Growth before a worker exited does not count after the fall; new growth does, later."""
    before = [(float(t), 100 * MiB + t * 2 * MiB) for t in range(20)]
    after = [(20.0 + t, 80 * MiB + t * 2 * MiB) for t in range(15)]
    drop = LIMIT * 0.015
    assert sustained_rate(before + after, drop, drop / 10) == 0.0
    more = [(20.0 + t, 80 * MiB + t * 2 * MiB) for t in range(25)]
    assert sustained_rate(before + more, drop, drop / 10) == pytest.approx(2 * MiB)


def test_a_worker_starting_after_another_exited_is_not_a_steep_leak() -> None:
    """The seconds of a fresh worker's imports right after a fall are not taken for a leak."""
    leak = [(float(t), 100 * MiB + t * 2 * MiB) for t in range(20)]
    fall = [(20.0, 80 * MiB)]
    # A spawned uvicorn worker importing for eight seconds on a busy machine, then the leak.
    boot = [(21.0 + t, 80 * MiB + (t + 1) * 6 * MiB) for t in range(8)]
    after = [(29.0 + t, 128 * MiB + t * 2 * MiB) for t in range(20)]
    drop = LIMIT * 0.015
    assert sustained_rate(leak + fall + boot + after[:4], drop, drop / 10) == 0.0
    for seconds in (10, 20):
        points = leak + fall + boot + after[:seconds]
        assert sustained_rate(points, drop, drop / 10) == pytest.approx(2 * MiB, rel=0.1)


def test_the_victim_is_the_rising_worker_that_grew_most() -> None:
    """A flat worker is never chosen, however big; among rising ones the most grown, then older."""
    least = int(LIMIT * MIN_GROWTH_SHARE)
    flat_and_big = Peer(1, 10.0, 90 * MiB, 0, 0.0)
    rising = Peer(2, 20.0, 30 * MiB, 20 * MiB, 0.0)
    rising_more = Peer(3, 30.0, 40 * MiB, 20 * MiB, 0.0)
    assert choose_victim([flat_and_big, rising, rising_more], least, MiB) == rising_more
    assert choose_victim([flat_and_big], least, MiB) is None
    assert choose_victim([Peer(4, 5.0, MiB, MiB, 0.0)], least, MiB) is None  # too little
    twin = Peer(5, 25.0, 40 * MiB, 20 * MiB, 0.0)
    assert choose_victim([rising_more, twin], least, MiB) == twin  # started earlier
    assert choose_victim([rising_more, twin], least, MiB, exclude=5) == rising_more


# -- the decision ---------------------------------------------------------------------------


def test_a_leaking_worker_is_recycled_once_when_the_drain_would_reach_critical(
    world: World,
) -> None:
    """Recycled at the sample where CRITICAL is within the drain, not before, and only once."""
    world.recycler()
    i = _leak_until(world, lambda: world.policy.state == "recycling")
    assert world.policy.prediction.seconds_to_critical is not None
    assert world.policy.prediction.seconds_to_critical <= 10.0
    usage = 100 * MiB + i * 2 * MiB
    assert (190 * MiB - usage) / (2 * MiB) <= 10.0 < (190 * MiB - usage + 2 * MiB) / (2 * MiB)
    for _ in range(5):
        world.feed(usage)
    deadline = time.monotonic() + 5
    while not world.stops and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(world.stops) == 1 and "within the 10 s a drain needs" in world.stops[0]
    assert world.kinds().count("recycle_pending") == 1
    assert world.kinds().count("restart_requested") == 1
    pending = next(p for k, p in world.sent if k == "recycle_pending")
    assert 9.0 < pending["seconds_to_limit"] <= 15.0
    assert "gc_forced" in world.kinds()  # relief was tried first


def _readyz(guard: Guard) -> tuple[int, dict[str, Any]]:
    status: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"served"]

    middleware = GuardMiddleware(app, guard=guard)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/readyz", "REMOTE_ADDR": "127.0.0.1"}
    body = b"".join(middleware(environ, lambda s, h: status.append(s)))
    return int(status[0].split()[0]), json.loads(body)


def test_a_predictive_recycle_takes_the_worker_out_of_readiness(world: World) -> None:
    """From the decision on, the recycled worker is draining: the container's /readyz (this
    worker alone in it) answers 503 naming it, as it answered 200 while it served."""
    world.recycler()
    world.feed(100 * MiB)
    assert draining(world.guard) is None
    assert _readyz(world.guard)[0] == 200
    _leak_until(world, lambda: world.policy.state == "recycling")
    reason = draining(world.guard)
    assert reason is not None and "within the 10 s a drain needs" in reason
    code, body = _readyz(world.guard)
    assert (code, body["ready"]) == (503, False)
    assert f"worker {os.getpid()} is draining: " in body["reason"]
    assert "grew" in body["reason"]


def test_the_draining_is_published_with_the_sample_that_decides(tmp_path: Path) -> None:
    """The other workers' /readyz sees a recycle decided on a sample in that sample's
    figures, not a sample later (by when a worker that drains fast is gone)."""
    probe, clock = FakeProbe(limit=LIMIT), ManualClock()
    guard = make_guard(probe, clock, recycle_drain="10", relief=False, leak_detection=False)
    view = str(tmp_path / "view")
    guard.add_component(ContainerPublisher(view, process_wide=False, slow_refresh=3600))
    stops: list[str] = []
    attach_recycler(guard, stops.append, "test", min_lifetime=0, jitter=0)
    policy = guard.component("recycling")
    assert isinstance(policy, RecyclePolicy)
    try:
        # 1 MiB/s: the recycle is due at 180 MiB, between two pressure levels (a new level
        # is published anyway).
        for i in range(150):
            probe.usage = 60 * MiB + i * MiB
            clock.now += 1
            guard.sample()
            if policy.state == "recycling":
                break
        assert policy.state == "recycling" and guard.pressure == Pressure.HIGH
        [mine] = read_container(view).workers
        assert mine["draining"] is not None and mine["draining"] == draining(guard)
    finally:
        guard.stop()


def test_a_worker_waiting_its_turn_is_not_draining(world: World, neighbour: Any) -> None:
    """A worker whose neighbour recycles first keeps taking requests (not draining)."""
    world.recycler()
    _publish(world.directory, neighbour.pid, growth=80 * MiB, rising=30 * MiB)
    _leak_until(world, lambda: world.policy.state != "idle")
    assert world.policy.state == "pending" and f"pid {neighbour.pid}" in (world.policy.reason or "")
    assert draining(world.guard) is None
    assert _readyz(world.guard)[0] == 200


def test_after_a_neighbour_exits_the_leak_rate_before_it_still_predicts(world: World) -> None:
    """Right after a fall the trend is blind; the rate before it, from the new usage, is not."""
    for i in range(30):
        world.feed(100 * MiB + i * 2 * MiB, rss=40 * MiB + i * MiB)
    world.feed(110 * MiB, rss=70 * MiB)  # a neighbour exited
    assert world.policy.prediction.seconds_to_critical == pytest.approx(40, abs=1)
    world.recycler()
    for i in range(1, 40):
        world.feed(110 * MiB + i * 2 * MiB, rss=70 * MiB + i * MiB)
        if world.policy.state == "recycling":
            break
    assert world.policy.state == "recycling"
    assert i <= 31  # within the 10 s drain of CRITICAL (190 MiB), not after it


def test_critical_held_with_a_rising_worker_recycles_without_a_trend(world: World) -> None:
    """Two CRITICAL samples with this worker's memory rising: recycled; one alone: nothing."""
    world.recycler()
    for i in range(30):
        world.feed(120 * MiB, rss=40 * MiB + i * MiB)
    world.feed(0.96 * LIMIT, rss=70 * MiB)  # one CRITICAL sample: shedding's business
    world.feed(120 * MiB, rss=70 * MiB)
    assert world.policy.state == "idle" and world.stops == []
    world.feed(0.96 * LIMIT, rss=71 * MiB)
    world.feed(0.96 * LIMIT, rss=72 * MiB)
    assert world.policy.state == "recycling"
    assert "usage is CRITICAL" in (world.policy.reason or "")


def test_health_says_a_recycle_is_pending_why_and_when(world: World) -> None:
    """health() carries recycle_pending, the reason and seconds_to_limit; idle says so too."""
    world.feed(100 * MiB)
    idle = world.guard.health()
    assert idle["recycle_pending"] is False and idle["recycle_reason"] is None
    assert idle["seconds_to_limit"] is None
    _leak_until(world, lambda: world.policy.state != "idle")
    health = world.guard.health()
    assert health["recycle_pending"] is True
    assert "CRITICAL in" in health["recycle_reason"]
    assert 0 < health["seconds_to_limit"] < 20
    assert health["recycle"]["drain_seconds"] == 10.0
    json.dumps(health)


def test_relief_that_frees_enough_prevents_the_recycle(world: World) -> None:
    """When the relief tried before a recycle gives the headroom back, nothing is recycled."""
    world.recycler()

    def freed(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            world.probe.usage -= 40 * MiB

    gc.callbacks.append(freed)
    try:
        _leak_until(world, lambda: "gc_forced" in world.kinds(), limit_samples=60)
    finally:
        gc.callbacks.remove(freed)
    assert world.policy.state == "idle"
    assert "recycle_pending" not in world.kinds()
    assert world.stops == []


def test_a_spike_is_never_recycled(world: World) -> None:
    """A one-off 60 MiB spike up to HIGH and back, with relief, causes no pending recycle."""
    world.recycler()
    for i in range(40):
        spike = 60 * MiB if i in (20, 21) else 0
        world.feed(110 * MiB + spike + (i % 2) * 64 * 1024)
    assert world.policy.state == "idle"
    assert world.policy.prediction.seconds_to_limit is None
    assert "recycle_pending" not in world.kinds() and world.stops == []


def test_a_flat_worker_is_never_recycled_for_its_neighbours_leak(
    world: World, neighbour: subprocess.Popen[bytes]
) -> None:
    """The container grows, this worker does not: the neighbour is the one named to go."""
    world.recycler()
    for i in range(60):
        _publish(world.directory, neighbour.pid, growth=(10 + i * 2) * MiB, rising=30 * MiB)
        world.feed(100 * MiB + i * 2 * MiB, rss=45 * MiB)
    assert world.policy.state == "pending"
    assert f"worker pid {neighbour.pid} grew most" in (world.policy.reason or "")
    assert world.stops == []
    assert world.guard.health()["recycle_pending"] is True


def test_a_worker_named_by_a_neighbour_that_saw_the_trend_first_recycles(
    world: World, neighbour: subprocess.Popen[bytes]
) -> None:
    """Named victim by a worker whose trend started earlier: recycled, unless it is flat."""
    world.recycler()
    for i in range(20):  # growing, but a fall just restarted this worker's trend
        world.feed(172 * MiB + (i % 2) * MiB, rss=40 * MiB + i * 2 * MiB)
    assert world.policy.prediction.seconds_to_limit is None
    victim = {"victim": os.getpid(), "by": neighbour.pid, "reason": "CRITICAL in ~9 s"}
    (world.directory / "victim.json").write_text(json.dumps({**victim, "at": time.time()}))
    world.feed(173 * MiB, rss=80 * MiB)
    assert world.policy.state == "recycling"
    assert f"seen first by worker pid {neighbour.pid}" in (world.policy.reason or "")


def test_a_flat_worker_named_by_a_neighbour_stays(
    world: World, neighbour: subprocess.Popen[bytes]
) -> None:
    """A named worker whose own memory is flat does not recycle on another's word."""
    world.recycler()
    for _ in range(20):
        world.feed(172 * MiB, rss=40 * MiB)
    victim = {"victim": os.getpid(), "by": neighbour.pid, "reason": "CRITICAL in ~9 s"}
    (world.directory / "victim.json").write_text(json.dumps({**victim, "at": time.time()}))
    world.feed(172 * MiB, rss=40 * MiB)
    assert world.policy.state == "pending" and world.stops == []


def test_only_one_worker_of_the_container_recycles_at_a_time(
    world: World, neighbour: subprocess.Popen[bytes]
) -> None:
    """While another worker recycles this one waits; it goes once that one is replaced."""
    world.recycler()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from runtime_guard._coordination import Coordinator\n"
            "c = Coordinator(sys.argv[1]); print(c.try_lock('other'), flush=True)\n"
            "time.sleep(60)",
            str(world.directory),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        _leak_until(world, lambda: world.policy.state == "waiting")
        assert f"waiting for worker pid {holder.pid}" in (world.policy.reason or "")
        world.feed(world.probe.usage + 2 * MiB, rss=200 * MiB)
        assert world.policy.state == "waiting" and world.stops == []
    finally:
        holder.kill()
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    world.feed(world.probe.usage + 2 * MiB, rss=202 * MiB)
    assert world.policy.state == "waiting"  # gone, but not replaced yet
    assert "not replaced yet" in (world.policy.reason or "")
    last = json.loads((world.directory / "recycle.json").read_text())
    assert last["pid"] == holder.pid
    last["since"] = time.time() - 10  # it went ten seconds ago, then its replacement came
    (world.directory / "recycle.json").write_text(json.dumps(last))
    _publish(world.directory, neighbour.pid, growth=0, rising=0, started=time.time() - 5)
    world.feed(world.probe.usage + 2 * MiB, rss=204 * MiB)
    assert world.policy.state == "recycling"


def test_the_worker_started_in_a_recycled_ones_place_recycles_its_own_leak_at_once(
    world: World, neighbour: subprocess.Popen[bytes]
) -> None:
    """The replacement that leaks as its predecessor did goes when due: no turn to wait for."""
    world.recycler()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    # The predecessor decided its recycle just before this worker started, and exited.
    _holder(world, gone.pid, since=time.time() - 5)
    _publish(world.directory, neighbour.pid, growth=0, rising=0, started=time.time() - 600)
    _leak_until(world, lambda: world.policy.state in ("recycling", "waiting"), rate=5 * MiB)
    assert world.policy.state == "recycling", world.policy.reason


def test_a_decision_on_a_sample_a_neighbours_exit_made_stale_is_dropped(world: World) -> None:
    """Due on the sample, but the memory came back since (a neighbour exited): no recycle."""
    world.recycler()
    for i in range(200):
        usage = 100 * MiB + i * 2 * MiB
        world.t += 1.0
        world.clock.now = world.t
        sample = _sample(world.t, usage, 40 * MiB + i * 2 * MiB)
        world.guard.history.append(sample)
        world.probe.usage = int(usage - 60 * MiB)  # what the probe reads a moment later
        world.policy.on_sample(world.guard, sample)
        if world.policy.prediction.seconds_to_critical is not None and (
            world.policy.prediction.seconds_to_critical < 5
        ):
            break
    assert world.policy.state != "recycling" and world.stops == []


def test_stuck_at_critical_without_growth_requests_a_restart_once_per_episode(
    world: World,
) -> None:
    """No trend, CRITICAL for restart_after: restart_requested once, again only after it ends."""
    for _ in range(3):
        world.feed(0.99 * LIMIT, seconds=10)
    assert "restart_requested" not in world.kinds()
    world.feed(0.99 * LIMIT, seconds=10)  # 30 s in
    world.feed(0.99 * LIMIT, seconds=1)
    world.guard.flush_signals()
    restarts = [p["reason"] for k, p in world.sent if k == "restart_requested"]
    assert len(restarts) == 1 and "CRITICAL for 30 s" in restarts[0]
    assert world.guard.health()["restart_requested"] is True
    world.feed(0.5 * LIMIT)
    assert world.guard.health()["restart_requested"] is False
    world.feed(0.99 * LIMIT)
    world.feed(0.99 * LIMIT, seconds=20)
    assert world.kinds().count("restart_requested") == 1


def test_stuck_at_critical_recycles_the_most_grown_worker_after_its_minimum_lifetime(
    world: World,
) -> None:
    """With a recycler, the restart_after fallback still takes turns and waits out the lifetime."""
    world.recycler()
    world.policy.min_lifetime = 0.0
    for _ in range(5):
        world.feed(0.99 * LIMIT, rss=60 * MiB, seconds=10)
    assert world.policy.state == "recycling"
    assert "CRITICAL for" in (world.policy.reason or "")


def test_recycle_drain_off_keeps_restart_after_as_a_plain_timer(tmp_path: Path) -> None:
    """recycle_drain='off': no prediction acts, restart_requested after restart_after as before."""
    guard = make_guard(FakeProbe(limit=LIMIT), recycle_drain="off", restart_after=20)
    policy = guard.component("recycling")
    assert isinstance(policy, RecyclePolicy) and policy.drain is None
    clock = ManualClock(0.0)
    policy.clock = clock
    sent: list[str] = []

    def receiver(sender: Any, reason: str = "", **_: Any) -> None:
        sent.append(reason)

    signals.restart_requested.connect(receiver)
    try:
        for i in range(40):
            clock.now = float(i)
            policy.on_sample(guard, _sample(float(i), 150 * MiB + i * 2 * MiB, 60 * MiB))
        guard.flush_signals()
        assert sent == []  # growing fast, but only the timer may act
        for i in range(40, 70):
            clock.now = float(i)
            policy.on_sample(guard, _sample(float(i), 0.99 * LIMIT, 60 * MiB))
        guard.flush_signals()
        assert len(sent) == 1 and "CRITICAL for 20 s" in sent[0]
    finally:
        signals.restart_requested.disconnect(receiver)
        guard.stop()


def test_recycle_drain_is_validated_with_a_clear_error() -> None:
    """A bad recycle_drain fails at install, naming the option and the accepted forms."""
    for bad in ("soon", -1, 0, True):
        with pytest.raises(
            ConfigError, match=r"recycle_drain=.* is not accepted: expected 'auto', a number"
        ):
            runtime_guard.install(recycle_drain=bad)
    for given, drain in (("2.5", 2.5), ("auto", 10.0), (None, 10.0)):
        guard = make_guard() if given is None else make_guard(recycle_drain=given)
        policy = guard.component("recycling")
        assert isinstance(policy, RecyclePolicy) and policy.drain == drain
        guard.stop()


def test_auto_drain_learns_from_the_recycles_in_the_container(auto_world: World) -> None:
    """A recycle seen while its worker runs is timed to its end; the budget is twice that."""
    world = auto_world
    world.recycler()
    assert world.policy.auto_drain and world.policy.drain == 10.0
    # The worker this one replaced: gone before this one looked, so not timed.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    _holder(world, int(gone.stdout), time.time() - 60)
    world.feed(150 * MiB)
    world.feed(150 * MiB, seconds=31)
    assert world.policy.measured_drain is None and world.policy.drain == 10.0
    # A neighbour decides now, this worker sees it running, then sees it end 2 s later.
    going = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    _holder(world, going.pid, time.time())
    world.feed(150 * MiB)
    going.wait(10)
    world.feed(150 * MiB)
    world.feed(150 * MiB, seconds=31)  # the budget is read again at most every 30 s
    measured = world.policy.measured_drain
    assert measured == pytest.approx(2.0, abs=1.0)
    assert measured is not None and world.policy.drain == max(LEAST_DRAIN, 2 * measured)
    assert world.policy.details()["drain_measured_seconds"] == world.policy.measured_drain


def _holder(world: World, pid: int, since: float) -> None:
    world.directory.mkdir(parents=True, exist_ok=True)
    path = world.directory / "recycle.json"
    path.write_text(json.dumps({"pid": pid, "since": since, "reason": "test"}))
    os.utime(path, ns=(time.time_ns(), time.time_ns()))  # a new stamp even within a tick


def test_the_policys_memory_stays_bounded(world: World) -> None:
    """Samples far faster than the interval keep a bounded window, not every sample."""
    for i in range(5000):
        world.feed(100 * MiB + (i % 7) * 4096, seconds=0.001)
    assert len(world.policy._points) <= 61


def test_a_receiver_that_raises_does_not_stop_the_recycle(world: World) -> None:
    """A failing recycle_pending receiver is logged; the worker is recycled all the same."""

    def broken(sender: Any, **payload: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.recycle_pending.connect(broken)
    try:
        world.recycler()
        _leak_until(world, lambda: world.policy.state == "recycling")
        world.guard.flush_signals()
    finally:
        signals.recycle_pending.disconnect(broken)
    deadline = time.monotonic() + 5
    while not world.stops and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(world.stops) == 1


# -- the report ---------------------------------------------------------------------------


class _Client:
    """A client class the test tracks, as the guard tracks redis.Redis."""

    def close(self) -> None:
        pass


_LEAKED: list[Any] = []


def _handle_request() -> None:
    _LEAKED.append(bytearray(256 * 1024))  # the leaking line
    _LEAKED.append(_Client())  # the client creation site


def _line(text: str) -> int:
    for number, line in enumerate(Path(__file__).read_text().splitlines(), 1):
        if text in line and "def " not in line and "_line(" not in line:
            return number
    raise LookupError(text)


def test_a_recycle_report_names_the_leaking_line_its_holder_and_the_clients(
    world: World,
) -> None:
    """A worker recycled 40 s after start is diagnosed at once and its report says what grew."""
    runtime_guard.track(_Client, name="test.Client")
    detector = world.guard.component("leaks")
    assert isinstance(detector, LeakDetector)
    world.recycler()
    base = time.monotonic()
    world.t = base
    try:
        for i in range(120):
            for _ in range(8):
                _handle_request()
            world.t = base + 1.0 * (i + 1)
            world.clock.now = world.t
            usage = 100 * MiB + i * 2 * MiB
            sample = _sample(world.t, usage, 40 * MiB + i * 2 * MiB, heap=100_000 + i * 50)
            world.probe.usage = int(usage)
            world.guard.history.append(sample)
            detector.on_sample(world.guard, sample)
            world.policy.on_sample(world.guard, sample)
            if world.policy.state == "recycling":
                break
        assert world.policy.state == "recycling", world.policy.health(world.guard)
        assert i < 60  # long before the ordinary detector's warm-up and windows
    finally:
        runtime_guard.tracking.untrack("test.Client")
        _LEAKED.clear()
    path = world.policy.report_path
    assert path is not None
    data = json.loads(Path(path).read_text())
    assert data["kind"] == "recycle" and data["recycle"]["pid"] == os.getpid()
    leak = data["leaks"][0]
    assert "Diagnosed at once" in leak["note"]
    sites = {(Path(s["filename"]).name, s["lineno"]) for s in leak["top_sites"]}
    assert (Path(__file__).name, _line("_LEAKED.append(bytearray(")) in sites
    # With the sites traced, the holder names what keeps the growth (no type census then).
    assert leak["holder"]["path"].endswith("test_recycling._LEAKED"), leak["holder"]
    client = data["unreleased"]["types"]["test.Client"]
    assert client["unreleased"] >= 8
    assert client["sites"][0]["line"] == _line("_LEAKED.append(_Client())")
    text = render_view_text(read_view(data))
    assert text.startswith("Worker recycle report")
    assert "Recycle" in text and "within the 10 s a drain needs" in text
    page = render_view(read_view(data))
    assert '<section id="recycle">' in page and "test.Client" in page


def test_the_log_line_names_the_site_the_holder_of_an_app_class_and_the_clients() -> None:
    """The summary line says why, where memory grew, who holds it and which clients leak."""
    from runtime_guard.recycle_report import summary_line

    site = {"filename": "app/views.py", "lineno": 42, "function": "handle"}
    leak = {"top_sites": [site], "referrer_chain": ["app.views._cache (dict)", "app.Entry"]}
    clients = {"redis.Redis": {"unreleased": 12, "sites": [{"site": "app/db.py:7 in connect"}]}}
    data = {
        "recycle": {"pid": 7, "reason": "CRITICAL in ~9 s"},
        "leaks": [{**leak, "chain_type": "app.Entry"}],
        "unreleased": {"types": clients},
    }
    line = summary_line(data)
    assert line.startswith("recycling worker pid 7: CRITICAL in ~9 s")
    assert "top growth site app/views.py:42 in handle" in line
    assert "held by app.views._cache (dict) -> app.Entry" in line
    assert "12 unreleased redis.Redis created at app/db.py:7 in connect" in line
    data["leaks"] = [{**leak, "chain_type": "set"}]
    assert "held by" not in summary_line(data)
