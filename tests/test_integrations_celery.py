"""Celery: a guard for every pool, shed tasks deferred without using up their retries, recycling.

Every test runs a real ``celery worker`` subprocess against a real redis-server (broker and
result backend); memory pressure comes from real allocations in the worker
(``celery_testapp.hog``).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, chord, signature
from celery.result import AsyncResult

from runtime_guard.config import ConfigError
from runtime_guard.integrations.celery import RECYCLE_EXIT_CODE, install

TESTS = Path(__file__).resolve().parent
EXAMPLES = TESTS.parent / "examples"
# Each test starts a worker and waits on it; none may hang the run.
pytestmark = pytest.mark.timeout(120)

# A Redis database of their own, emptied before each worker: a message deferred in one
# test must not be run by the next test's worker.
CELERY_DB = 7

# The example worker plus two tasks only the example's tests need.
EXAMPLE_EXTRA = textwrap.dedent(
    """
    import os, time
    import runtime_guard
    from runtime_guard import signals
    from celery_worker import app, report, work

    @app.task
    def pid():
        return os.getpid()

    @app.task
    def restart():
        runtime_guard.get_guard().send(signals.restart_requested, reason="asked by the test")
        time.sleep(1.0)  # the current task finishes before the process goes
        return os.getpid()
    """
)


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


@dataclass
class Worker:
    """A running ``celery worker`` subprocess and a client of its app."""

    proc: subprocess.Popen[bytes]
    client: Celery
    log: Path
    app: str

    def send(self, task: str, *args: Any, **options: Any) -> AsyncResult:
        """Send ``task`` (a name in the ``-A`` module unless dotted) with ``args``."""
        name = task if "." in task else f"{self.app}.{task}"
        return self.client.send_task(name, args, **options)

    def call(self, task: str, *args: Any, timeout: float = 30.0) -> Any:
        return self.send(task, *args).get(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_worker(tmp_path: Path, redis_server: Any) -> Iterator[Callable[..., Worker]]:
    """Start ``celery worker`` subprocesses (stopped after the test); yields a starter."""
    workers: list[Worker] = []
    url = f"redis://{redis_server.host}:{redis_server.port}/{CELERY_DB}"

    def start(
        app: str = "celery_testapp", pool: str = "prefork", concurrency: int = 1, **env: str
    ) -> Worker:
        if env.get("TEST_FLUSH") != "0":
            with redis.Redis.from_url(url) as db:
                db.flushdb()
        (tmp_path / "example_app.py").write_text(EXAMPLE_EXTRA)
        environment = {
            **os.environ,
            "TEST_BROKER_URL": url,
            "EXAMPLE_REDIS_URL": url,
            "EXAMPLE_CONCURRENCY": str(concurrency),
            "EXAMPLE_LEAK": "",
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(EXAMPLES), str(tmp_path)]),
            "RUNTIME_GUARD_INTERVAL": "0.2",
            **env,
        }
        name = f"t{uuid.uuid4().hex[:8]}@localhost"
        log = tmp_path / f"worker-{len(workers)}.log"
        command = [sys.executable, "-m", "celery", "-A", app, "worker", "-l", "info"]
        command += ["-P", pool, "-c", str(concurrency), "-n", name]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=out, stderr=out)
        client = Celery(app, broker=url, backend=url)
        worker = Worker(proc, client, log, app)
        workers.append(worker)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, worker.output()
            if client.control.ping(destination=[name], timeout=0.5):
                return worker
        raise AssertionError(f"worker did not start:\n{worker.output()}")

    yield start
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.terminate()
            try:
                worker.proc.wait(30)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(10)
        worker.client.close()


def pressure_high(worker: Worker) -> None:
    """Make the worker's task process hold memory until its guard reports HIGH or more."""
    assert worker.call("hog") in ("HIGH", "CRITICAL"), worker.output()


def wait_for_state(result: AsyncResult, state: str, timeout: float = 30.0) -> None:
    wait_until(lambda: result.state == state, timeout, f"{result.id} in state {state}")


# -- the example worker -------------------------------------------------------------------


@pytest.mark.slow
def test_shed_task_is_deferred_while_ordinary_tasks_run(start_worker: Any) -> None:
    """Under critical pressure the example's shed task type is deferred; other tasks run."""
    worker = start_worker(
        "example_app", RUNTIME_GUARD_MEMORY_LIMIT="1MB", RUNTIME_GUARD_RESTART_AFTER="off"
    )
    time.sleep(1.0)  # a few samples: the process is critical from the first one
    assert "pid" in worker.call("celery_worker.work")
    shed = worker.send("celery_worker.report")
    wait_for_state(shed, "RETRY")
    assert "shed at CRITICAL" in str(shed.info)


@pytest.mark.slow
def test_restart_recycles_the_prefork_process_after_its_task(start_worker: Any) -> None:
    """restart_requested lets the current task finish, then the pool starts a fresh process."""
    worker = start_worker(
        "example_app", RUNTIME_GUARD_RECYCLE_MIN_LIFETIME="0", RUNTIME_GUARD_RECYCLE_JITTER="0"
    )
    first = worker.call("pid")
    assert worker.call("restart") == first  # finished, not killed
    assert wait_until(lambda: worker.call("pid") != first)


# -- shedding -----------------------------------------------------------------------------


@pytest.mark.slow
def test_deferrals_leave_the_task_retry_budget_alone(start_worker: Any) -> None:
    """A shed autoretry task still gets all its max_retries, and request.retries stays its own."""
    worker = start_worker(RUNTIME_GUARD_RESTART_AFTER="off")
    pressure_high(worker)
    flaky = worker.send("flaky")
    plain = worker.send("report")
    wait_for_state(flaky, "RETRY")
    wait_for_state(plain, "RETRY")
    assert "shed at" in str(flaky.info)
    # Deferred again and again while the pressure lasts.
    wait_until(lambda: worker.call("health")["celery"]["tasks_deferred"] >= 4)
    assert worker.call("release") in ("OK", "ELEVATED")

    # max_retries=5 and five ValueErrors: it succeeds only if no deferral was charged
    # against its budget, nor its limit changed on the task object the requests share.
    ran = flaky.get(timeout=60)
    assert ran["retries"] == 5, worker.output()
    assert ran["deferrals"] >= 1
    seen = plain.get(timeout=30)
    assert seen["retries"] == 0
    assert seen["deferrals"] >= 1
    # And the next request of the same type has its own whole budget too.
    assert worker.send("flaky").get(timeout=60)["retries"] == 5


@pytest.mark.slow
def test_a_task_runs_after_max_deferrals_whatever_the_pressure(start_worker: Any) -> None:
    """After max_deferrals deferrals a shed task runs under pressure: delayed, never dropped."""
    worker = start_worker(
        RUNTIME_GUARD_RESTART_AFTER="off", TEST_MAX_DEFERRALS="2", TEST_RETRY_AFTER="0.5"
    )
    pressure_high(worker)
    ran = worker.send("report").get(timeout=60)
    assert ran["deferrals"] == 2
    assert ran["retries"] == 0
    assert ran["pressure"] in ("HIGH", "CRITICAL")
    celery = worker.call("health")["celery"]
    assert celery["tasks_deferred"] == 2
    assert celery["tasks_run_past_max_deferrals"] == 1
    assert celery["max_deferrals"] == 2
    assert "deferred 2 times, max_deferrals=2" in worker.output()


@pytest.mark.slow
def test_deferred_chord_members_complete_the_chord_with_late_acks(
    start_worker: Any, redis_server: Any
) -> None:
    """Shed chord members keep their ids and chord; the body runs once; no message is left."""
    worker = start_worker(RUNTIME_GUARD_RESTART_AFTER="off", TEST_ACKS_LATE="1")
    pressure_high(worker)
    parts = [signature("celery_testapp.part", (i,), app=worker.client) for i in range(4)]
    body = signature("celery_testapp.total", app=worker.client)
    result = chord(parts, app=worker.client)(body)
    members = [AsyncResult(child.id, app=worker.client) for child in result.parent.results]
    wait_until(lambda: all(m.state == "RETRY" for m in members), what="members deferred")
    assert worker.call("release") in ("OK", "ELEVATED")
    assert result.get(timeout=60) == 0 + 1 + 2 + 3
    assert [m.get(timeout=10) for m in members] == [0, 1, 2, 3]
    url = f"redis://{redis_server.host}:{redis_server.port}/{CELERY_DB}"
    with redis.Redis.from_url(url) as db:
        # With acks_late each deferred message was acknowledged once its copy was out.
        assert wait_until(lambda: db.hlen("unacked") == 0 and db.llen("celery") == 0)


# -- pools --------------------------------------------------------------------------------

IN_PROCESS_POOLS = ["solo", "threads", "gevent", "eventlet"]


@pytest.mark.slow
@pytest.mark.parametrize("pool", IN_PROCESS_POOLS)
def test_pools_without_pool_processes_guard_shed_and_recycle_the_worker(
    start_worker: Any, pool: str, tmp_path: Path
) -> None:
    """solo/threads/gevent/eventlet: the worker process has the guard, sheds, and recycles
    by a warm shutdown with exit status 75 after its running task, its metrics marked dead."""
    if pool in ("gevent", "eventlet") and importlib.util.find_spec(pool) is None:
        pytest.skip(f"{pool} is not installed")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    worker = start_worker(
        pool=pool,
        concurrency=1 if pool == "solo" else 4,
        PROMETHEUS_MULTIPROC_DIR=str(metrics),
        RUNTIME_GUARD_RESTART_AFTER="off",
        RUNTIME_GUARD_RECYCLE_MIN_LIFETIME="0",
        RUNTIME_GUARD_RECYCLE_JITTER="0",
    )
    health = worker.call("health")
    assert health["installed"], worker.output()
    assert health["pid"] == worker.proc.pid
    assert health["celery"]["pool"] == pool
    assert health["celery"]["recycle"] == "worker"
    assert f"Celery pool {pool!r}: a guard in the worker process" in worker.output()

    pressure_high(worker)
    shed = worker.send("report")
    wait_for_state(shed, "RETRY")
    assert worker.call("release") in ("OK", "ELEVATED")
    assert shed.get(timeout=30)["deferrals"] >= 1

    live = metrics / f"gauge_liveall_{worker.proc.pid}.db"
    assert wait_until(live.exists, what=live.name)
    assert worker.call("restart") == worker.proc.pid  # the running task finished
    assert worker.proc.wait(60) == RECYCLE_EXIT_CODE
    assert not live.exists()


@pytest.mark.slow
def test_no_task_is_lost_when_the_worker_recycles(start_worker: Any) -> None:
    """Tasks queued or reserved when a threads worker shuts down to recycle run in the next one."""
    recycle_now = {"RUNTIME_GUARD_RECYCLE_MIN_LIFETIME": "0", "RUNTIME_GUARD_RECYCLE_JITTER": "0"}
    first = start_worker(pool="threads", concurrency=2, **recycle_now)
    first.send("restart")
    queued = [first.send("sleepy", i) for i in range(8)]
    assert first.proc.wait(60) == RECYCLE_EXIT_CODE
    done_before = sum(result.ready() for result in queued)
    assert done_before < len(queued)  # some were still waiting when it went

    start_worker(pool="threads", concurrency=2, TEST_FLUSH="0")  # what a supervisor does
    assert [result.get(timeout=60) for result in queued] == list(range(8))


@pytest.mark.slow
def test_prefork_pool_processes_report_their_recycling(start_worker: Any) -> None:
    """With prefork the guard lives in each pool process and says it recycles that process."""
    worker = start_worker()
    health = worker.call("health")
    assert health["installed"]
    assert health["pid"] != worker.proc.pid
    assert health["celery"]["pool"] == "prefork"
    assert health["celery"]["recycle"] == "pool process"


@pytest.mark.slow
def test_recycle_false_leaves_the_worker_running(start_worker: Any) -> None:
    """recycle=False on a pool without pool processes: a restart request stops nothing."""
    worker = start_worker(
        "example_app",
        pool="threads",
        concurrency=2,
        EXAMPLE_RECYCLE="0",
        RUNTIME_GUARD_RECYCLE_MIN_LIFETIME="0",
        RUNTIME_GUARD_RECYCLE_JITTER="0",
    )
    worker.call("restart")
    time.sleep(3.0)  # longer than the loop takes to see a shutdown flag
    assert worker.proc.poll() is None
    assert "recycling is off" in worker.output()


# -- Prometheus multiprocess files --------------------------------------------------------


def series_pids(directory: Path) -> set[str]:
    """The ``pid`` labels of the guard's live gauges a scrape of ``directory`` exports."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    try:
        return {
            sample.labels["pid"]
            for metric in registry.collect()
            if metric.name == "runtime_guard_memory_rss_bytes"
            for sample in metric.samples
        }
    except struct.error:
        # A process that has just started created its file and has not sized it yet
        # (prometheus_client's own reader fails on it): polled again.
        return set()


@pytest.mark.slow
def test_dead_pool_processes_leave_no_metrics(start_worker: Any, tmp_path: Path) -> None:
    """A recycled pool process, and one killed outright, stop being exported."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    worker = start_worker(
        PROMETHEUS_MULTIPROC_DIR=str(metrics),
        RUNTIME_GUARD_RECYCLE_MIN_LIFETIME="0",
        RUNTIME_GUARD_RECYCLE_JITTER="0",
    )
    first = worker.call("pid")
    wait_until(lambda: str(first) in series_pids(metrics), what="the first process's series")

    assert worker.call("restart") == first
    second = wait_until(lambda: (pid := worker.call("pid")) != first and pid)
    wait_until(lambda: str(second) in series_pids(metrics), what="the second process's series")
    assert str(first) not in series_pids(metrics)
    assert not list(metrics.glob(f"gauge_live*_{first}.db"))

    os.kill(second, signal.SIGKILL)  # no shutdown hook runs: its replacement cleans up
    third = wait_until(lambda: (pid := worker.call("pid")) != second and pid)
    wait_until(lambda: str(third) in series_pids(metrics), what="the third process's series")
    assert str(second) not in series_pids(metrics)


# -- configuration ------------------------------------------------------------------------


def test_install_validates_options_at_once() -> None:
    """A bad option fails where the app is defined, naming it, not in each worker process."""
    with pytest.raises(ConfigError, match="interval"):
        install(Celery("t"), interval="soon")
    with pytest.raises(ValueError, match="pressure level"):
        install(Celery("t"), shed={"t.x": "sometimes"})
    with pytest.raises(ConfigError, match="retry_after"):
        install(Celery("t"), retry_after=0)
    with pytest.raises(ConfigError, match="max_deferrals"):
        install(Celery("t"), max_deferrals=0)
    with pytest.raises(ConfigError, match="shed"):
        install(Celery("t"), shed="t.x")
