"""Celery: a guard in each worker process, shedding of task types, recycling after a task.

::

    from celery import Celery
    from runtime_guard.integrations.celery import install

    app = Celery("tasks", broker="redis://127.0.0.1:6379/0")
    install(app, shed={"tasks.build_report": "high"}, memory_limit="2GiB")

Each pool process installs its own guard when it starts (``worker_process_init``). A task
type listed in ``shed`` that arrives while pressure is at or above its level is not run:
it is retried after ``retry_after`` seconds (``Task.retry``), so it waits in the broker
instead of in this process's memory; these retries do not use up the task's own
``max_retries``. On ``restart_requested`` the pool process exits after its current task
and the pool starts a fresh one: the same path as ``worker_max_memory_per_child``, which
billiard checks after every task.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import runtime_guard
from runtime_guard.config import Config
from runtime_guard.guard import Guard
from runtime_guard.integrations._http import missing_extra
from runtime_guard.integrations._recycle import Recycler, attach_recycler
from runtime_guard.pressure import Pressure, parse_level

try:
    import billiard.pool
    import celery
    from celery import signals as celery_signals
    from celery.app.trace import build_tracer
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("celery", "celery", "celery") from exc

__all__ = ["TaskShed", "enable_recycling", "install", "recycle_after_task"]

_log = logging.getLogger("runtime_guard")

# worker_max_memory_per_child is in KiB; this is far above any real process, so billiard
# checks after every task (what recycling needs) without ever recycling on memory alone.
_NEVER_KIB = 1 << 42

_recycle_requested = False
_real_mem_rss: Callable[[], int] = billiard.pool.mem_rss


class TaskShed(Exception):
    """Why a shed task was retried: pressure was at or above its level."""


def _mem_rss() -> int:
    # billiard recycles a pool process after a task when this exceeds
    # max_memory_per_child; after restart_requested it does, so the process exits cleanly
    # and the pool replaces it, exactly as for a process that outgrew its memory.
    if _recycle_requested:
        return _NEVER_KIB * 2
    return _real_mem_rss()


def recycle_after_task(reason: str = "") -> None:
    """Make this pool process exit after its current task (or its next one, when idle)."""
    global _recycle_requested
    _recycle_requested = True
    billiard.pool.mem_rss = _mem_rss


def enable_recycling(
    guard: Guard, *, min_lifetime: float | None = None, jitter: float | None = None
) -> Recycler:
    """Recycle this pool process after its current task when ``guard`` asks for a restart."""
    return attach_recycler(
        guard, recycle_after_task, "celery", min_lifetime=min_lifetime, jitter=jitter
    )


def _levels(shed: Mapping[str, Any] | Iterable[str]) -> dict[str, Pressure]:
    if isinstance(shed, Mapping):
        return {name: parse_level(level, f"shed[{name!r}]") for name, level in shed.items()}
    return dict.fromkeys(shed, Pressure.HIGH)


def _shed_task(task: Any, level: Pressure, retry_after: int) -> None:
    run = task.run

    @functools.wraps(run)
    def guarded_run(*args: Any, **kwargs: Any) -> Any:
        guard = runtime_guard.get_guard()
        if guard is not None and guard.pressure >= level:
            retries = task.request.retries or 0
            raise task.retry(
                countdown=retry_after,
                max_retries=retries + 1,  # shedding never exhausts the task's own retries
                exc=TaskShed(f"{task.name} shed at {guard.pressure.name} memory pressure"),
            )
        return run(*args, **kwargs)

    task.run = guarded_run


def install(
    app: celery.Celery,
    *,
    shed: Mapping[str, Any] | Iterable[str] = (),
    retry_after: int = 30,
    recycle: bool = True,
    **options: Any,
) -> None:
    """Set ``app`` up so that each worker process runs its own guard.

    ``shed`` maps task names to the pressure level from which they are shed (a plain list
    sheds at ``"high"``). ``options`` are :func:`runtime_guard.install` options, validated
    now. Call it where the app is defined, before the worker starts.
    """
    Config.from_options(options)
    levels = _levels(shed)
    if recycle and not app.conf.worker_max_memory_per_child:
        app.conf.worker_max_memory_per_child = _NEVER_KIB

    def on_process_init(sender: Any = None, **_: Any) -> None:
        try:
            guard = runtime_guard.install(**options)
            if recycle:
                enable_recycling(guard)
            for name, level in levels.items():
                task = app.tasks.get(name)
                if task is None:
                    _log.warning("runtime_guard: no task %r to shed; check the name", name)
                    continue
                _shed_task(task, level, retry_after)
                task.__trace__ = build_tracer(name, task, app.loader, sender, app=app)
        except Exception:
            _log.exception("runtime_guard: could not set the guard up in a Celery worker")

    celery_signals.worker_process_init.connect(on_process_init, weak=False)
    # Leak reports rank tasks by what each leaves allocated.
    from runtime_guard.leaks.routes import connect_celery

    connect_celery(celery_signals)
