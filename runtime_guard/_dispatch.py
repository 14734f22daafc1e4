"""Delivers signals on a thread of their own, so a slow receiver delays only other signals."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from blinker import NamedSignal

from runtime_guard.signals import emit

__all__ = ["MAX_QUEUED", "Dispatcher"]

_log = logging.getLogger("runtime_guard")

MAX_QUEUED = 1000
"""Signals waiting for slow receivers at most; past it the oldest are dropped (and logged)."""


class Dispatcher:
    """A bounded queue of signals and the daemon thread that sends them in order."""

    def __init__(self, sender: Any, maxlen: int = MAX_QUEUED) -> None:
        self._sender = sender
        self._queue: deque[tuple[NamedSignal, dict[str, Any]]] = deque(maxlen=maxlen)
        self.dropped = 0
        """Signals dropped because receivers fell ``maxlen`` signals behind."""
        self.suppressed = 0
        """Signals a receiver caused of the very signal it was receiving, not sent again."""
        self._delivering: NamedSignal | None = None
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name="runtime-guard-signals", daemon=True
            )
            self._thread.start()

    def send(self, signal: NamedSignal, **payload: Any) -> None:
        """Queue ``signal``; returns at once. Without receivers it costs a dict lookup."""
        if not signal.receivers:
            return
        if signal is self._delivering and threading.current_thread() is self._thread:
            # A receiver of X that causes X (sample() inside sample_taken, relieve() inside
            # gc_forced) would feed itself forever at full speed.
            self.suppressed += 1
            return
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
                if self.dropped == 1:
                    _log.warning(
                        "runtime_guard: receivers are %d signals behind; dropping the oldest",
                        self._queue.maxlen,
                    )
            self._queue.append((signal, payload))
            self._cond.notify()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued signal was delivered; False on timeout.

        From a receiver (the dispatcher thread itself) it returns at once.
        """
        if threading.current_thread() is self._thread:
            return not self._queue
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if self._stopping and not self._queue:
                    return
                signal, payload = self._queue.popleft()
                self._busy = True
            self._delivering = signal
            try:
                emit(signal, self._sender, **payload)
            except BaseException:  # pragma: no cover - emit isolates receivers already
                _log.exception("runtime_guard: signal delivery failed")
            finally:
                self._delivering = None

    def stop(self, timeout: float = 1.0) -> None:
        """Deliver what is queued (within ``timeout``) and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def after_fork(self) -> None:
        """In a fork child: the parent's thread is gone and its lock may be held."""
        self._queue.clear()
        self._reset()
