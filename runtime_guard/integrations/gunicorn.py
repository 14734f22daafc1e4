"""gunicorn: server hooks that give each worker its guard and recycle workers gracefully.

In ``gunicorn.conf.py``, with options from ``RUNTIME_GUARD_*`` variables::

    from runtime_guard.integrations.gunicorn import (
        child_exit, on_starting, post_fork, post_worker_init,
    )

or with options in code::

    from runtime_guard.integrations import gunicorn as guard_hooks

    globals().update(guard_hooks.hooks(memory_limit="2GiB", process_limit="400MB"))

``post_fork`` installs the guard in each worker; ``post_worker_init`` gives it back the
on-demand diagnosis signal (``SIGUSR2``), which the worker resets after ``post_fork``. On
``restart_requested`` the worker, after ``recycle_min_lifetime`` and a random
``recycle_jitter``, sends itself SIGTERM: gunicorn's
graceful worker shutdown, which finishes in-flight requests before the worker exits and the
master starts a fresh one. ``child_exit`` and ``on_starting`` keep Prometheus multiprocess
files right when ``PROMETHEUS_MULTIPROC_DIR`` is set.
"""

from __future__ import annotations

import glob
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import runtime_guard
from runtime_guard.config import Config
from runtime_guard.guard import Guard
from runtime_guard.integrations._http import missing_extra
from runtime_guard.integrations._recycle import Recycler, attach_recycler, log_through

try:
    import gunicorn  # noqa: F401  (only to fail early, naming the extra)
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("gunicorn", "gunicorn", "gunicorn") from exc

__all__ = [
    "child_exit",
    "enable_recycling",
    "hooks",
    "on_starting",
    "post_fork",
    "post_worker_init",
    "shutdown",
]

_log = logging.getLogger("runtime_guard")

Hook = Callable[..., None]


def shutdown(reason: str = "") -> None:
    """Shut this worker down gracefully: SIGTERM to itself, gunicorn's own worker path."""
    os.kill(os.getpid(), signal.SIGTERM)


def enable_recycling(
    guard: Guard, *, min_lifetime: float | None = None, jitter: float | None = None
) -> Recycler:
    """Recycle this worker gracefully when ``guard`` sends ``restart_requested``."""
    return attach_recycler(guard, shutdown, "gunicorn", min_lifetime=min_lifetime, jitter=jitter)


def _multiproc_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def hooks(recycle: bool = True, **options: Any) -> dict[str, Hook]:
    """Return the server hooks, to put in the gunicorn config module's globals.

    ``options`` are :func:`runtime_guard.install` options (validated now, so a bad one
    stops the master rather than every worker); ``recycle=False`` leaves recycling off.
    """
    Config.from_options(options)

    def on_starting(server: Any) -> None:
        # prometheus_client's rule for multiprocess mode: start from an empty directory,
        # or files of a previous run's workers are summed into this one's.
        directory = _multiproc_dir()
        if directory and os.path.isdir(directory):
            for path in glob.glob(os.path.join(directory, "*.db")):
                os.remove(path)

    def post_fork(server: Any, worker: Any) -> None:
        try:
            log_through(list(getattr(getattr(server, "log", None), "error_log", _log).handlers))
            guard = runtime_guard.install(**options)
            if recycle:
                enable_recycling(guard)
            _log.info("runtime_guard: guard installed in gunicorn worker pid %d", worker.pid)
        except Exception:
            # Never take the worker down: it serves without a guard, and says so.
            _log.exception("runtime_guard: could not install the guard in a gunicorn worker")

    def post_worker_init(worker: Any) -> None:
        # The worker reset every signal it knows (SIGUSR2 among them) after post_fork.
        try:
            guard = runtime_guard.get_guard()
            if guard is not None:
                from runtime_guard.leaks.ondemand import install_signal

                install_signal(guard)
        except Exception:
            _log.exception("runtime_guard: no on-demand diagnosis signal in this worker")

    def child_exit(server: Any, worker: Any) -> None:
        if _multiproc_dir():
            try:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
            except Exception:
                _log.exception("runtime_guard: could not mark worker %d dead", worker.pid)

    return {
        "on_starting": on_starting,
        "post_fork": post_fork,
        "post_worker_init": post_worker_init,
        "child_exit": child_exit,
    }


_default = hooks()
on_starting: Hook = _default["on_starting"]
"""Hook: clears Prometheus multiprocess files from a previous run."""
post_fork: Hook = _default["post_fork"]
"""Hook: installs the guard (options from ``RUNTIME_GUARD_*``) and recycling in the worker."""
post_worker_init: Hook = _default["post_worker_init"]
"""Hook: gives the worker back the on-demand diagnosis signal (gunicorn resets it)."""
child_exit: Hook = _default["child_exit"]
"""Hook: tells Prometheus multiprocess mode that a worker is gone."""
