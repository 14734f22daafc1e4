"""The scenario app under Celery's prefork pool; ``SVC_MODE`` picks the mitigation.

``none``: nothing. ``stock``: ``worker_max_memory_per_child`` (``SVC_MAX_MEMORY_KB``),
billiard's own recycling on a child's RSS. ``guard``: the guard's Celery integration, every
option from ``RUNTIME_GUARD_*`` variables.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from svc_work import REDIS_URL, handle, spike

app = Celery("svc_celery", broker=REDIS_URL, backend=REDIS_URL)
app.conf.worker_concurrency = int(os.environ.get("SVC_WORKERS", "2"))
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_prefetch_multiplier = 1
app.conf.result_expires = 600
# Forty tasks a second: a line per task received and succeeded would be most of the work.
for name in ("celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(name).setLevel(logging.WARNING)

mode = os.environ.get("SVC_MODE", "none")
if mode == "stock":
    app.conf.worker_max_memory_per_child = int(os.environ.get("SVC_MAX_MEMORY_KB", "60000"))
elif mode == "guard":
    from runtime_guard.integrations.celery import install

    install(app)


@app.task(name="svc.work")
def work(path: str = "/task") -> dict[str, Any]:
    """One job's work."""
    return handle(path)


@app.task(name="svc.spike")
def big_report() -> dict[str, Any]:
    """A large report built once."""
    return spike()
