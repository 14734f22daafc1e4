"""uWSGI: what the guard needs from uWSGI, said at ``install()``, and graceful recycling.

Nothing to call: ``install()`` (or ``import runtime_guard.auto``) inside uWSGI calls
:func:`at_install`, which checks the two things the guard relies on and names the missing
option once, in the log, when one is missing:

- Python threads for the sampler: ``--enable-threads`` (on by default from uWSGI 2.0.27);
- Python's fork hooks when the guard is installed in the master and uWSGI then forks the
  workers from it (the default, without ``--lazy-apps``): ``--py-call-uwsgi-fork-hooks``.
  Without them the workers inherit a guard whose sampler thread did not survive the fork.

It also attaches recycling: on ``restart_requested`` the worker sends itself SIGHUP,
uWSGI's graceful reload of one worker: it takes no new request, finishes the ones it is
serving, exits, and the master forks a fresh one. The other workers keep serving.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime_guard.guard import Guard
from runtime_guard.integrations._recycle import Recycler, attach_recycler

__all__ = ["Setup", "at_install", "enable_recycling", "missing_options", "running", "shutdown"]

_log = logging.getLogger("runtime_guard")

# uWSGI reads these values of a boolean option as false (uwsgi_opt_true).
_FALSE = frozenset({"false", "off", "no", "0"})


def running() -> Any:
    """The ``uwsgi`` module when this process runs inside uWSGI, else ``None``.

    uWSGI builds the module into the interpreter it embeds; nothing else provides it.
    """
    return sys.modules.get("uwsgi")


def _flag(opt: Mapping[str, Any], name: str) -> bool:
    value = opt.get(name)
    if isinstance(value, list):  # an option given more than once: the last one counts
        value = value[-1] if value else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return bool(value)


@dataclass(frozen=True)
class Setup:
    """What the guard needs to know of the uWSGI it runs in."""

    threads: bool
    """Python threads run (``uwsgi.has_threads``)."""
    worker_id: int
    """This process's worker number; 0 in the master, where the app loads unless lazy."""
    forks_workers: bool
    """uWSGI forks workers from this process: it has a master, or several processes."""
    fork_hooks: bool
    """uWSGI runs Python's fork hooks (``--py-call-uwsgi-fork-hooks``, or the older
    ``--py-call-osafterfork``), so a guard installed before the fork restarts in each worker."""

    @property
    def forks_without_hooks(self) -> bool:
        """This is the master, and uWSGI forks the workers from it without Python's fork
        hooks: a guard installed here restarts in no worker."""
        return self.worker_id == 0 and self.forks_workers and not self.fork_hooks

    @classmethod
    def read(cls, uwsgi: Any) -> Setup:
        """Read the facts from the running ``uwsgi`` module."""
        opt: Mapping[str, Any] = getattr(uwsgi, "opt", {}) or {}
        processes = int(getattr(uwsgi, "numproc", 1) or 1)
        return cls(
            threads=bool(getattr(uwsgi, "has_threads", 0)),
            worker_id=int(uwsgi.worker_id()),
            forks_workers=_flag(opt, "master") or processes > 1,
            fork_hooks=_flag(opt, "py-call-uwsgi-fork-hooks") or _flag(opt, "py-call-osafterfork"),
        )


def missing_options(setup: Setup) -> list[str]:
    """One sentence per option the guard needs and this uWSGI lacks (empty: all is well)."""
    missing: list[str] = []
    if not setup.threads:
        missing.append(
            "Python threads are off, so the guard's sampler runs only in the moments a "
            "request is being served: start uWSGI with --enable-threads (enable-threads = true)"
        )
    if setup.forks_without_hooks:
        missing.append(
            "the guard is installed in the uWSGI master, and uWSGI forks the workers without "
            "Python's fork hooks, so no worker runs a sampler: start uWSGI with "
            "--py-call-uwsgi-fork-hooks (py-call-uwsgi-fork-hooks = true), or load the app "
            "in each worker with --lazy-apps"
        )
    return missing


def shutdown(reason: str = "") -> None:
    """Reload this worker gracefully: SIGHUP to itself, uWSGI's reload of one worker.

    In the master (worker 0) nothing happens: SIGHUP there would reload every worker.
    """
    uwsgi = running()
    if uwsgi is None or int(uwsgi.worker_id()) <= 0:
        _log.warning("runtime_guard: not a uWSGI worker (pid %d); not recycling", os.getpid())
        return
    os.kill(os.getpid(), signal.SIGHUP)


def enable_recycling(
    guard: Guard, *, min_lifetime: float | None = None, jitter: float | None = None
) -> Recycler:
    """Recycle this worker gracefully when ``guard`` sends ``restart_requested``.

    Graceful in uWSGI's prefork and ``--threads`` modes; in its async modes (gevent) uWSGI
    ends a reloading worker at once.
    """
    return attach_recycler(guard, shutdown, "uwsgi", min_lifetime=min_lifetime, jitter=jitter)


def at_install(guard: Guard) -> None:
    """Called by ``install()`` inside uWSGI: say what is missing, attach recycling.

    Never raises: a problem here is logged and the guard runs on.
    """
    uwsgi = running()
    if uwsgi is None:
        return
    try:
        setup = Setup.read(uwsgi)
        for problem in missing_options(setup):
            _log.warning("runtime_guard: uWSGI: %s", problem)
        if setup.forks_without_hooks:
            # uWSGI forks the workers from this process without Python's fork hooks: a
            # thread of the guard holding a lock (or the GIL) at that moment would leave a
            # worker waiting on it forever. The master serves nothing; it runs no thread.
            guard.stop_threads(1.0)
        enable_recycling(guard)
    except Exception:
        _log.exception("runtime_guard: could not set the guard up for uWSGI")
