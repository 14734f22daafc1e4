"""Threads, asyncio tasks and file descriptors that pile up are reported with their sites;
a bounded thread pool, short tasks and connections closed after use never are."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import servers
from clocked import Clocked, clocked, line_of

from runtime_guard import signals
from runtime_guard.guard import Guard
from runtime_guard.probes import RuntimeProbe
from runtime_guard.resources import ResourceReport, default_hooks
from runtime_guard.testing import make_guard
from runtime_guard.tracking.component import Floors

WINDOW = 10.0


def _line(text: str) -> int:
    return line_of(__file__, text)


@dataclass
class Watch:
    clocked: Clocked
    reports: list[dict[str, Any]]

    @property
    def guard(self) -> Guard:
        return self.clocked.guard

    def window(self) -> None:
        """Samples spread over one window of the hand-driven clock."""
        self.clocked.after(WINDOW / 2)
        self.clocked.after(WINDOW / 2)

    def kinds(self) -> list[str]:
        return [r["report"].kind for r in self.reports]

    def report(self, kind: str) -> ResourceReport:
        found: ResourceReport = next(r["report"] for r in self.reports if r["report"].kind == kind)
        return found


@pytest.fixture
def watch() -> Iterator[Watch]:
    with clocked(
        [signals.resources_growing], resource_window=WINDOW, resource_min_growth=10
    ) as found:
        found.guard.sample()
        yield Watch(found, found.sent["resources_growing"])


# -- threads ------------------------------------------------------------------------------


def test_a_thread_started_per_request_is_reported_with_its_site(watch: Watch) -> None:
    """Threads that never end, started per request, pile up: reported once, at the line
    that starts them, with the oldest ones' stacks."""
    stop = threading.Event()

    def handle_request() -> None:
        threading.Thread(target=stop.wait, daemon=True).start()  # a thread per request

    try:
        for _ in range(6):
            for _ in range(4):
                handle_request()
            watch.window()
        assert watch.kinds() == ["threads"]
        report = watch.report("threads")
        assert report.rise >= 10 and report.growth_per_minute > 0
        assert report.sites[0]["line"] == _line("a thread per request")
        assert report.sites[0]["count"] >= 20
        assert any("in wait" in frame for frame in report.oldest[0]["stack"])
        assert "threads" in watch.guard.health()["resources"]["growing"]
    finally:
        stop.set()


def test_a_bounded_thread_pool_that_reaches_its_size_is_not_reported(watch: Watch) -> None:
    """A pool of 32 workers grows to its size as load arrives and stays there under a load
    that comes and goes, window after window: never reported."""
    gate = threading.Event()
    with ThreadPoolExecutor(max_workers=32) as pool:
        for window in range(10):
            busy = [pool.submit(gate.wait, 5) for _ in range(16 if window % 2 else 40)]
            watch.window()
            gate.set()
            for future in busy:
                future.result(10)
            gate.clear()
    assert watch.reports == []


# -- asyncio tasks ------------------------------------------------------------------------


def test_tasks_created_and_never_awaited_are_reported_with_their_site(watch: Watch) -> None:
    """Fire-and-forget tasks that never finish pile up: reported at the create_task line,
    the oldest with the await it is stuck in; short tasks beside them change nothing."""
    never = asyncio.Event

    async def wait_forever(event: asyncio.Event) -> None:
        await event.wait()  # stuck here

    async def main() -> None:
        event = never()
        for _ in range(6):
            for _ in range(4):
                asyncio.create_task(wait_forever(event))  # noqa: RUF006  # fire and forget
                asyncio.create_task(asyncio.sleep(0))  # noqa: RUF006
            await asyncio.sleep(0.01)
            watch.window()
        event.set()
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert watch.kinds() == ["tasks"]
    report = watch.report("tasks")
    assert report.sites[0]["line"] == _line("fire and forget")
    assert report.sites[0]["count"] >= 20
    where = f":{_line('stuck here')} in wait_forever"
    stuck = [o for o in report.oldest if any(frame.endswith(where) for frame in o["stack"])]
    assert len(stuck) >= 3  # main itself, running, is among the oldest too


def test_short_tasks_under_load_are_not_reported(watch: Watch) -> None:
    """Many tasks a window, each finishing at once: the floor stays flat."""

    async def main() -> None:
        for _ in range(8):
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(200)))
            watch.window()

    asyncio.run(main())
    assert watch.reports == []


# -- file descriptors ---------------------------------------------------------------------


def test_sockets_opened_per_call_and_kept_are_reported_with_their_owner(
    watch: Watch, redis_server: servers.RedisServer
) -> None:
    """Descriptors that pile up are reported with their kinds and the tracked sockets'
    creation line; connections closed after each call are not."""
    kept: list[socket.socket] = []

    def connect() -> socket.socket:
        return socket.create_connection((redis_server.host, redis_server.port))

    try:
        for _ in range(6):
            for _ in range(4):
                kept.append(connect())
                connect().close()
            watch.window()
        assert "fds" in watch.kinds()
        report = watch.report("fds")
        assert report.kinds["socket"] >= 16
        owner = report.sites[0]
        assert owner["type"] == "socket.socket" and owner["count"] >= 16
        assert owner["function"] == "connect" and owner["file"] == __file__
    finally:
        for sock in kept:
            sock.close()


# -- the figures --------------------------------------------------------------------------


def test_runtime_probe_counts_descriptors_and_tasks() -> None:
    """fds matches /proc/self/fd (without the listing's own descriptor); tasks counts the
    live tasks of a running loop; neither imports asyncio."""
    probe = RuntimeProbe()
    before = probe.fds()
    files = [open(os.devnull) for _ in range(5)]
    try:
        assert probe.fds() == before + 5
        assert probe.fds() == len(os.listdir("/proc/self/fd")) - 1
    finally:
        for f in files:
            f.close()

    async def main() -> int:
        event = asyncio.Event()
        tasks = [asyncio.create_task(event.wait()) for _ in range(7)]
        count = probe.tasks()
        event.set()
        await asyncio.gather(*tasks)
        return count

    assert asyncio.run(main()) >= 8  # the seven and main itself


def test_floors_need_four_rises_and_the_least_growth() -> None:
    """Four rising window floors and a rise of at least min_growth: growth; a ramp to a
    plateau or a smaller rise: none."""
    steady = Floors(10.0)
    for t in range(0, 60):
        steady.add(float(t), float(t // 10) * 5)
    assert steady.growth(10) is not None
    plateau = Floors(10.0)
    for t in range(0, 90):
        plateau.add(float(t), float(min(t // 10, 3)) * 5)
    assert plateau.growth(10) is None
    small = Floors(10.0)
    for t in range(0, 60):
        small.add(float(t), float(t // 10))
    assert small.growth(10) is None


def test_thread_and_task_hooks_come_off_when_the_guard_stops() -> None:
    """After the guard stops, Thread.__init__ and BaseEventLoop.create_task are the originals."""
    import asyncio.base_events

    init, create = threading.Thread.__init__, asyncio.base_events.BaseEventLoop.create_task
    guard = make_guard()
    assert default_hooks.enabled
    assert threading.Thread.__init__ is not init
    assert asyncio.base_events.BaseEventLoop.create_task is not create
    guard.stop()
    assert not default_hooks.enabled
    assert threading.Thread.__init__ is init
    assert asyncio.base_events.BaseEventLoop.create_task is create
