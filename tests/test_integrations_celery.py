"""Celery: a guard per pool process, shed task types retried, recycling after the current task."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from runtime_guard.config import ConfigError
from runtime_guard.integrations.celery import install

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The example worker plus two tasks only tests need.
TEST_APP = textwrap.dedent(
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


@pytest.fixture
def worker(tmp_path: Path, redis_server: Any) -> Iterator[Any]:
    """Start the example worker (one pool process) with extra environment; yields a starter."""
    procs: list[subprocess.Popen[bytes]] = []
    opened: list[Any] = []
    (tmp_path / "testapp.py").write_text(TEST_APP)

    def start(**env: str) -> Celery:
        environment = {
            **os.environ,
            "EXAMPLE_REDIS_URL": redis_server.url,
            "EXAMPLE_CONCURRENCY": "1",
            "EXAMPLE_LEAK": "",
            "PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(tmp_path)]),
            "RUNTIME_GUARD_INTERVAL": "0.2",
            **env,
        }
        log = open(tmp_path / "worker.log", "wb")
        opened.append(log)
        command = [sys.executable, "-m", "celery", "-A", "testapp", "worker", "-l", "info"]
        procs.append(
            subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=log, stderr=log)
        )
        client = Celery("celery_worker", broker=redis_server.url, backend=redis_server.url)
        opened.append(client)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert procs[-1].poll() is None, (tmp_path / "worker.log").read_text()
            if client.control.ping(timeout=0.5):
                return client
        raise AssertionError("worker did not start")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)
    for item in opened:
        item.close()


def test_shed_task_is_retried_while_ordinary_tasks_run(worker: Any) -> None:
    """Under critical pressure the shed task type is retried later; other tasks still run."""
    client = worker(RUNTIME_GUARD_MEMORY_LIMIT="1MB", RUNTIME_GUARD_RESTART_AFTER="off")
    time.sleep(1.0)  # a few samples: the process is critical from the first one
    assert "pid" in client.send_task("celery_worker.work").get(timeout=30)
    shed = client.send_task("celery_worker.report", countdown=0)
    deadline = time.monotonic() + 30
    while shed.state != "RETRY" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shed.state == "RETRY"
    assert "shed at CRITICAL" in str(shed.info)


def test_restart_recycles_the_process_after_its_task(worker: Any) -> None:
    """restart_requested lets the current task finish, then the pool starts a fresh process."""
    client = worker(RUNTIME_GUARD_RECYCLE_MIN_LIFETIME="0", RUNTIME_GUARD_RECYCLE_JITTER="0")
    first = client.send_task("testapp.pid").get(timeout=30)
    assert client.send_task("testapp.restart").get(timeout=30) == first  # finished, not killed
    later = first
    deadline = time.monotonic() + 30
    while later == first and time.monotonic() < deadline:
        later = client.send_task("testapp.pid").get(timeout=30)
    assert later != first


def test_install_validates_options_at_once() -> None:
    """A bad guard option fails where the app is defined, not in each worker process."""
    with pytest.raises(ConfigError, match="interval"):
        install(Celery("t"), interval="soon")
    with pytest.raises(ValueError, match="pressure level"):
        install(Celery("t"), shed={"t.x": "sometimes"})
