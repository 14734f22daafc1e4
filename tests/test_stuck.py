"""Work past its deadline: a hung periodic job, a limiter holder, an async job and a Celery
task are reported once each with where they hang; work that finishes in time never is."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import servers
from clocked import Clocked, clocked, line_of

import runtime_guard
from runtime_guard import limiter, no_overlap, signals, stuck


def _line(text: str) -> int:
    return line_of(__file__, text)


@pytest.fixture
def watch() -> Iterator[Clocked]:
    with clocked([signals.work_stuck], (stuck.default_registry,)) as found:
        yield found


def _names(line: int) -> str:
    return f"{Path(__file__).name}:{line} in "


def test_a_hung_periodic_job_is_reported_once_with_the_line_it_hangs_on(watch: Clocked) -> None:
    """A no_overlap job past its deadline: one work_stuck with its thread's stack, ending at
    the call it hangs in; the next runs are skipped as before."""
    release = threading.Event()
    started = threading.Event()

    @no_overlap(deadline=60)
    def sync_prices() -> None:
        started.set()
        release.wait(30)  # the call that hangs

    runner = threading.Thread(target=sync_prices)
    runner.start()
    try:
        assert started.wait(30)
        watch.after(59.0)
        assert watch.sent["work_stuck"] == []
        watch.after(2.0)
        (payload,) = watch.sent["work_stuck"]
        assert payload["task"].endswith("sync_prices") and payload["seconds"] >= 60
        assert any(_names(_line("the call that hangs")) in frame for frame in payload["stack"])
        assert sync_prices() is None  # still running: skipped
        assert watch.guard.health()["stuck_work"][0]["task"] == payload["task"]
        watch.after(60.0)
        assert len(watch.sent["work_stuck"]) == 1
    finally:
        release.set()
        runner.join(30)
    assert watch.guard.health()["stuck_work"] == []


def test_a_job_that_finishes_in_time_never_reports(watch: Clocked) -> None:
    """Runs shorter than the deadline leave nothing behind."""

    @no_overlap(deadline=5)
    def quick() -> int:
        return 1

    for _ in range(100):
        assert quick() == 1
    watch.after(3600.0)
    assert watch.sent["work_stuck"] == [] and stuck.default_registry.running == {}


def test_an_async_job_past_its_deadline_names_the_await_it_waits_in(watch: Clocked) -> None:
    """For an asyncio task the stack is its chain of awaits, down to the one it waits in."""

    @no_overlap(name="refresh-cache", deadline=10)
    async def refresh(event: asyncio.Event) -> None:
        await event.wait()  # awaiting forever

    async def main() -> None:
        event = asyncio.Event()
        job = asyncio.create_task(refresh(event))
        await asyncio.sleep(0.01)
        watch.after(11.0)
        event.set()
        await job

    asyncio.run(main())
    (payload,) = watch.sent["work_stuck"]
    assert payload["task"] == "refresh-cache"
    assert any(_names(_line("awaiting forever")) in frame for frame in payload["stack"])


def test_a_limiter_holder_past_its_deadline_is_reported(watch: Clocked) -> None:
    """A thread holding a limiter slot longer than the limiter's deadline is reported with
    its stack; holders that give the slot back in time are not."""
    reports = limiter("reports", 2, deadline=30)
    release = threading.Event()
    holding = threading.Event()

    def build() -> None:
        with reports:
            holding.set()
            release.wait(30)  # holds the slot

    for _ in range(20):
        with reports:
            pass
    runner = threading.Thread(target=build)
    runner.start()
    try:
        assert holding.wait(30)
        watch.after(31.0)
        (payload,) = watch.sent["work_stuck"]
        assert payload["task"] == "limiter reports"
        assert any(_names(_line("holds the slot")) in frame for frame in payload["stack"])
    finally:
        release.set()
        runner.join(30)
    assert stuck.default_registry.running == {}


def test_a_slot_released_by_another_thread_ends_the_oldest_hold() -> None:
    """acquire() in one thread and release() in another: the run noted ends all the same."""
    gate = limiter("handoff", 1, deadline=30)
    worker = threading.Thread(target=gate.acquire)
    worker.start()
    worker.join(30)
    assert len(stuck.default_registry.running) == 1
    gate.release()
    assert stuck.default_registry.running == {}


def test_a_bad_deadline_fails_at_once_naming_it() -> None:
    """deadline must be seconds greater than 0, for no_overlap and limiter alike."""
    with pytest.raises(ValueError, match="no_overlap: deadline"):
        no_overlap(deadline=0)
    with pytest.raises(ValueError, match="limiter 'x': deadline"):
        limiter("x", 1, deadline=-1)
    with pytest.raises(ValueError, match="deadline"):
        limiter("y", 1, deadline="soon")  # type: ignore[arg-type]


# -- Celery -------------------------------------------------------------------------------

# The thread pool enforces no time limit (only prefork does): a task past it runs on unseen
# unless something reports it.
CELERY_APP = textwrap.dedent(
    """
    import os, threading
    import runtime_guard
    from celery import Celery
    from runtime_guard.integrations.celery import install

    app = Celery("stuckapp", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
    install(app, interval=0.2)
    runtime_guard.install(interval=0.2)  # the thread pool has no pool process to start one

    @app.task(time_limit=1)
    def export():
        threading.Event().wait(4)  # hangs past its limit
        return "done"

    @app.task(time_limit=5)
    def quick():
        return "ok"
    """
)


@pytest.mark.slow
def test_a_celery_task_past_its_time_limit_is_reported_with_its_stack(
    tmp_path: Path, redis_server: servers.RedisServer
) -> None:
    """A real worker (thread pool): a task running past its time limit is reported from the
    worker with its stack; one that finishes in time is not."""
    from celery import Celery

    (tmp_path / "stuckapp.py").write_text(CELERY_APP)
    log = tmp_path / "worker.log"
    env = {**os.environ, "REDIS_URL": redis_server.url, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-m", "celery", "-A", "stuckapp", "worker", "-P", "threads"]
    command += ["-c", "2", "-l", "info"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        client = Celery("stuckapp", broker=redis_server.url, backend=redis_server.url)
        assert client.send_task("stuckapp.quick").get(timeout=60) == "ok"
        assert client.send_task("stuckapp.export").get(timeout=60) == "done"
        text = log.read_text()
        assert text.count("past its deadline") == 1, text
        assert "stuckapp.export has run" in text
        assert f"stuckapp.py:{CELERY_APP.splitlines().index(_hang_line()) + 1} in export" in text
    finally:
        proc.terminate()
        proc.wait(30)


def _hang_line() -> str:
    return next(line for line in CELERY_APP.splitlines() if "hangs past its limit" in line)


def test_the_installed_guard_reports_from_its_sampler(tmp_path: Path) -> None:
    """With install(), a hung job is reported by the sampler thread on its own."""
    arrived = threading.Event()
    got: list[dict[str, Any]] = []

    def receive(sender: Any, **payload: Any) -> None:
        got.append(payload)
        arrived.set()

    signals.work_stuck.connect(receive)
    release = threading.Event()

    @no_overlap(deadline=0.2)
    def hang() -> None:
        release.wait(30)

    runner = threading.Thread(target=hang)
    try:
        runtime_guard.install(interval=0.05)
        runner.start()
        assert arrived.wait(30)
        assert got[0]["seconds"] >= 0.2
    finally:
        release.set()
        runner.join(30)
        signals.work_stuck.disconnect(receive)


def test_reports_kept_stay_capped_however_many_runs_hang(watch: Clocked) -> None:
    """Past their caps the stuck component keeps its last 20 reports and the timeline its
    last MAX_RESOURCE_REPORTS, however many runs are reported."""
    from runtime_guard.reports.timeline import MAX_RESOURCE_REPORTS, Timeline

    tokens = [stuck.default_registry.begin(f"job-{i}", 1.0) for i in range(80)]
    watch.after(2.0)
    component = watch.guard.component("stuck")
    timeline = watch.guard.component("timeline")
    assert isinstance(component, stuck.StuckComponent) and isinstance(timeline, Timeline)
    assert len(watch.sent["work_stuck"]) == 80
    assert len(component.reports) == 20
    _, latest = timeline.copy()
    assert len(latest["resources"]) == MAX_RESOURCE_REPORTS
    for token in tokens:
        stuck.default_registry.end(token)
