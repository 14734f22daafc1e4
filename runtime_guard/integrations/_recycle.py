"""Turns ``restart_requested`` into one graceful recycle of this worker, with jitter."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from runtime_guard import signals
from runtime_guard._component import Component
from runtime_guard.guard import Guard

__all__ = ["Recycler", "attach_recycler", "log_through"]

_log = logging.getLogger("runtime_guard")


class Recycler(Component):
    """Calls ``stop(reason)`` once, after the minimum lifetime and a random jitter.

    The server's own ``stop`` does the graceful part (finish in-flight work, exit, let the
    supervisor start a fresh worker); this only decides when.
    """

    name = "recycler"

    def __init__(
        self,
        guard: Guard,
        stop: Callable[[str], None],
        *,
        server: str,
        min_lifetime: float | None = None,
        jitter: float | None = None,
    ) -> None:
        self.stop = stop
        """What recycles the worker; called at most once, on a timer thread."""
        self.server = server
        """Name of the server, for logs."""
        self.min_lifetime = (
            guard.config.recycle_min_lifetime if min_lifetime is None else min_lifetime
        )
        """Seconds the worker lives at least (counted from this recycler's creation)."""
        self.jitter = guard.config.recycle_jitter if jitter is None else jitter
        """Most seconds of random delay added."""
        self.started = time.monotonic()
        self.reason: str | None = None
        """Why a recycle was scheduled; ``None`` until then."""
        self._guard = guard
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        signals.restart_requested.connect(self._on_restart, sender=guard, weak=False)

    def delay(self) -> float:
        """Seconds from now until the recycle may happen (lifetime left plus jitter)."""
        left = self.started + self.min_lifetime - time.monotonic()
        return max(0.0, left) + random.uniform(0.0, self.jitter)

    def _on_restart(self, sender: Any, reason: str = "", **_: Any) -> None:
        self._schedule(reason or "restart requested", None)

    def recycle_now(self, reason: str) -> bool:
        """Recycle at once, without the minimum lifetime or the jitter; False if scheduled.

        For the guard's own recycles (:mod:`runtime_guard.recycling`): they are already
        one worker at a time, chosen for their growth, and timed to the drain budget.
        """
        return self._schedule(reason, 0.0)

    def _schedule(self, reason: str, delay: float | None) -> bool:
        with self._lock:
            if self.reason is not None:
                return False
            self.reason = reason
            delay = self.delay() if delay is None else delay
            _log.warning(
                "runtime_guard: recycling %s worker pid %d in %.1f s: %s",
                self.server,
                os.getpid(),
                delay,
                self.reason,
            )
            self._timer = threading.Timer(delay, self._fire)
            self._timer.daemon = True
            self._timer.name = "runtime-guard-recycle"
            self._timer.start()
        return True

    def _fire(self) -> None:
        _log.warning(
            "runtime_guard: recycling %s worker pid %d now: %s",
            self.server,
            os.getpid(),
            self.reason,
        )
        try:
            self.stop(self.reason or "")
        except Exception:
            _log.exception("runtime_guard: recycling the %s worker failed", self.server)

    def health(self, guard: Guard) -> dict[str, Any]:
        return {"recycle_scheduled": self.reason is not None}

    def after_fork(self, guard: Guard) -> None:
        # A forked child is a new worker: its own lifetime, nothing scheduled yet.
        self.started = time.monotonic()
        self.reason = None
        self._lock = threading.Lock()
        self._timer = None

    def close(self, guard: Guard) -> None:
        # Without a sender: blinker only forgets a receiver disconnected from ANY, and a
        # remembered bound method would keep this recycler and its guard alive.
        signals.restart_requested.disconnect(self._on_restart)
        if self._timer is not None:
            self._timer.cancel()


def log_through(handlers: list[logging.Handler]) -> None:
    """Send the guard's log to the server's own handlers, unless the host set logging up.

    Servers configure their own loggers, not the root one, so without this the guard's
    reports (leaks, recycling) would reach only Python's last-resort stderr handler.
    """
    if _log.handlers or logging.getLogger().handlers or not handlers:
        return
    for handler in handlers:
        _log.addHandler(handler)
    if _log.level == logging.NOTSET:
        _log.setLevel(logging.INFO)
    _log.propagate = False


def attach_recycler(
    guard: Guard,
    stop: Callable[[str], None],
    server: str,
    *,
    min_lifetime: float | None = None,
    jitter: float | None = None,
) -> Recycler:
    """Attach a :class:`Recycler` to ``guard``, replacing one attached earlier."""
    old = guard.component(Recycler.name)
    if old is not None:
        old.close(guard)
        guard._components.remove(old)
    recycler = Recycler(guard, stop, server=server, min_lifetime=min_lifetime, jitter=jitter)
    guard.add_component(recycler)
    return recycler
