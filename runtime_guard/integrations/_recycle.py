"""What the server integrations share: one graceful recycle per ``restart_requested``, with
jitter; the bookkeeping when a worker goes; and an opt-in copy of the guard's log to the
server's own log.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from runtime_guard import events, signals
from runtime_guard._component import Component
from runtime_guard.guard import Guard

__all__ = ["Recycler", "ServerLogHandler", "attach_recycler", "log_to", "worker_gone"]

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
            events.record(
                "recycle_scheduled",
                logging.ERROR,
                f"recycling {self.server} worker pid {os.getpid()} in {delay:.1f} s: {self.reason}",
                {"server": self.server, "reason": self.reason, "delay_seconds": round(delay, 3)},
            )
            self._timer = threading.Timer(delay, self._fire)
            self._timer.daemon = True
            self._timer.name = "runtime-guard-recycle"
            self._timer.start()
        return True

    def _fire(self) -> None:
        events.record(
            "recycle_started",
            logging.ERROR,
            f"recycling {self.server} worker pid {os.getpid()} now: {self.reason}",
            {"server": self.server, "reason": self.reason},
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


def _destination(handler: logging.Handler) -> object:
    """Where ``handler`` writes: the file's (device, inode) when it has one, else itself."""
    stream = getattr(handler, "stream", None)
    try:
        if stream is not None:
            info = os.fstat(stream.fileno())
            return (info.st_dev, info.st_ino)
        filename = getattr(handler, "baseFilename", None)
        if filename is not None:  # a FileHandler that has not opened its file yet
            info = os.stat(filename)
            return (info.st_dev, info.st_ino)
    except (OSError, ValueError, AttributeError):
        pass
    return stream if stream is not None else handler


def _handlers_up(logger: logging.Logger | None) -> list[logging.Handler]:
    """The handlers a record logged on ``logger`` reaches through propagation."""
    found: list[logging.Handler] = []
    while logger is not None:
        found.extend(logger.handlers)
        if not logger.propagate:
            break
        logger = logger.parent
    return found


class ServerLogHandler(logging.Handler):
    """Hands each record to a server's own logger too (gunicorn's error log), once.

    The record also propagates to the root logger as usual. A destination propagation
    reaches anyway (the root logger writing to the same stream or file as the server's
    log) is skipped, so no line is written twice.
    """

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target
        """The server's logger; its handlers (and its parents' while it propagates) write."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            reached = [h for h in _handlers_up(logging.getLogger(record.name)) if h is not self]
            taken = {_destination(h) for h in reached}
            for handler in _handlers_up(self.target):
                if handler in reached or _destination(handler) in taken:
                    continue
                if record.levelno >= handler.level:
                    handler.handle(record)
        except Exception:
            self.handleError(record)


def log_to(target: logging.Logger) -> ServerLogHandler:
    """Copy the guard's log to ``target`` (a server's logger) as well; replaces an earlier copy.

    The guard's records keep propagating to the root logger (the host's logging setup).
    While the ``runtime_guard`` logger has no level of its own, it takes ``target``'s, so
    the server's log level decides what the guard writes there.
    """
    for old in [h for h in _log.handlers if isinstance(h, ServerLogHandler)]:
        _log.removeHandler(old)
    handler = ServerLogHandler(target)
    _log.addHandler(handler)
    if _log.level == logging.NOTSET:
        _log.setLevel(target.getEffectiveLevel())
    return handler


def worker_gone(pid: int | None = None) -> None:
    """Tell per-process exporters that worker ``pid`` (default: this process) is gone.

    Under Prometheus multiprocess mode its live gauges leave the scrape. Never raises.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from runtime_guard.integrations.prometheus import mark_dead
    except ImportError:  # prometheus_client is not installed: no files to keep right
        return
    mark_dead(pid)


def _gone_at_exit() -> None:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from runtime_guard.integrations.prometheus import mark_dead_at_exit
    except ImportError:
        return
    mark_dead_at_exit()


def attach_recycler(
    guard: Guard,
    stop: Callable[[str], None],
    server: str,
    *,
    min_lifetime: float | None = None,
    jitter: float | None = None,
) -> Recycler:
    """Attach a :class:`Recycler` to ``guard``, replacing one attached earlier.

    The worker it recycles also leaves Prometheus multiprocess metrics when it exits.
    """
    _gone_at_exit()
    recycler = Recycler(guard, stop, server=server, min_lifetime=min_lifetime, jitter=jitter)
    guard.add_component(recycler)
    return recycler
