# mypy: disallow-untyped-calls=False, disallow-untyped-decorators=False
# (these tests drive third-party code that ships without types: Celery, redis-py, hypothesis)
"""The Celery app that tests/test_integrations_celery.py runs in real worker subprocesses.

Configured from the environment: ``TEST_BROKER_URL`` (broker and result backend),
``TEST_RETRY_AFTER`` and ``TEST_MAX_DEFERRALS`` (shedding), ``TEST_ACKS_LATE``. Memory
pressure is real: ``hog`` holds enough memory to push this process past its
``process_limit``, which is set from the worker's own RSS at import (4x), and ``release``
frees it again.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import psutil
from celery import Celery, Task

import runtime_guard
from runtime_guard import Pressure, signals
from runtime_guard.integrations.celery import DEFERRALS_HEADER, install

os.environ.setdefault("RUNTIME_GUARD_MEMORY_LIMIT", "1TB")  # only the process's own RSS counts
os.environ.setdefault("RUNTIME_GUARD_PROCESS_LIMIT", str(4 * psutil.Process().memory_info().rss))

BROKER = os.environ["TEST_BROKER_URL"]
app = Celery("celery_testapp", broker=BROKER, backend=BROKER)
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_prefetch_multiplier = 1
app.conf.task_acks_late = os.environ.get("TEST_ACKS_LATE") == "1"
max_deferrals = os.environ.get("TEST_MAX_DEFERRALS", "100")
install(
    app,
    shed={
        "celery_testapp.flaky": "high",
        "celery_testapp.report": "high",
        "celery_testapp.part": "high",
    },
    retry_after=float(os.environ.get("TEST_RETRY_AFTER", "1")),
    max_deferrals=None if max_deferrals == "none" else int(max_deferrals),
)

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from runtime_guard.integrations.prometheus import install_metrics

    install_metrics()

_held: list[bytearray] = []


def _wait_for(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)


def _seen(task: Task) -> dict[str, Any]:
    """What a shed task saw of its own request, and the pressure it ran at."""
    guard = runtime_guard.get_guard()
    return {
        "retries": task.request.retries,
        "deferrals": (task.request.headers or {}).get(DEFERRALS_HEADER, 0),
        "pressure": None if guard is None else guard.pressure.name,
        "pid": os.getpid(),
    }


@app.task
def pid() -> int:
    """This pool process's pid."""
    return os.getpid()


@app.task
def health() -> dict[str, Any]:
    """Whether this process has a guard, and what it says of Celery."""
    guard = runtime_guard.get_guard()
    celery = None if guard is None else guard.health().get("celery")
    return {"pid": os.getpid(), "installed": guard is not None, "celery": celery}


@app.task
def hog() -> str:
    """Hold memory past this process's limit; return once the guard sees HIGH pressure."""
    guard = runtime_guard.get_guard()
    assert guard is not None and guard.config.process_limit
    limit = guard.config.process_limit
    rss = psutil.Process().memory_info().rss
    _held.append(bytearray(b"\x01") * max(limit - rss + limit // 10, 1 << 20))
    _wait_for(lambda: guard.pressure >= Pressure.HIGH)
    return guard.pressure.name


@app.task
def release() -> str:
    """Free what ``hog`` held; return once the guard's pressure is below HIGH again."""
    guard = runtime_guard.get_guard()
    assert guard is not None
    _held.clear()
    gc.collect()
    _wait_for(lambda: guard.pressure < Pressure.HIGH)
    return guard.pressure.name


@app.task(bind=True, autoretry_for=(ValueError,), max_retries=5, retry_kwargs={"countdown": 0.1})
def flaky(self: Task) -> dict[str, Any]:
    """Fails with ValueError until its fifth retry: it needs its whole retry budget."""
    if self.request.retries < 5:
        raise ValueError(f"attempt {self.request.retries} fails")
    return _seen(self)


@app.task(bind=True)
def report(self: Task) -> dict[str, Any]:
    """An optional task, shed under pressure."""
    return _seen(self)


@app.task
def part(i: int) -> int:
    """A shed chord member."""
    return i


@app.task
def total(values: list[int]) -> int:
    """A chord body."""
    return sum(values)


@app.task
def sleepy(i: int, seconds: float = 0.3) -> int:
    """Ordinary work that takes a while."""
    time.sleep(seconds)
    return i


@app.task
def restart() -> int:
    """Ask the guard for a restart, then take a second: the running task must finish."""
    guard = runtime_guard.get_guard()
    assert guard is not None
    guard.send(signals.restart_requested, reason="asked by the test")
    time.sleep(1.0)
    return os.getpid()
