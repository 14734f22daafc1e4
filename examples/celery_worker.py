"""A Celery worker guarded by runtime_guard, with Redis as broker and result backend.

Run (from the repository root, with redis-server running; add ``EXAMPLE_LEAK=cache,redis``
to switch the leaks on)::

    celery --workdir examples -A celery_worker worker --loglevel=info

Any pool works (``--pool solo``, ``threads``, ``gevent``, ``eventlet``). With prefork each
pool process installs its own guard, and a process whose pressure stays critical is
recycled after its current task; with the other pools the worker process has the guard and
a recycle is a warm shutdown of the worker (exit status 75) for its supervisor to restart
(``EXAMPLE_RECYCLE=0`` switches recycling off). ``celery_worker.report`` is shed from HIGH
pressure on: deferred for 30 seconds, up to 10 times, without using up its own retries.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from leaky import REDIS_URL, handle

from runtime_guard.integrations.celery import install

app = Celery("celery_worker", broker=REDIS_URL, backend=REDIS_URL)
app.conf.worker_concurrency = int(os.environ.get("EXAMPLE_CONCURRENCY", "2"))
app.conf.broker_connection_retry_on_startup = True
install(
    app,
    shed={"celery_worker.report": "high"},
    retry_after=30,
    max_deferrals=10,
    recycle=os.environ.get("EXAMPLE_RECYCLE", "1") != "0",
)


@app.task
def work(path: str = "/task") -> dict[str, Any]:
    """Ordinary work: runs whatever the pressure."""
    return handle(path)


@app.task
def report(rows: int = 10_000) -> int:
    """An optional, memory-hungry task: shed under pressure."""
    return len([str(i) * 10 for i in range(rows)])
