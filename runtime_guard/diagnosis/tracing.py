"""A tracemalloc session that never disturbs a host already tracing, and the guards
around CPython's crash in ``tracemalloc.stop()`` while other threads start or end."""

from __future__ import annotations

import sys
import threading
import time
import tracemalloc

__all__ = [
    "DEFAULT_FRAMES",
    "STOP_MAY_CRASH",
    "TracemallocSession",
    "other_threads",
    "stop_is_safe",
    "thread_idents",
]


DEFAULT_FRAMES = 8
"""Frames kept per allocation when this module starts tracemalloc.

tracemalloc's cost grows with the depth; eight frames reach from the allocating line through
a few library layers back to the application's own code.
"""


STOP_MAY_CRASH = sys.version_info < (3, 12, 9) or (3, 13) <= sys.version_info < (3, 13, 2)
"""True on Pythons where ``tracemalloc.stop()`` can crash the process (CPython gh-128679).

There ``stop()`` frees tracemalloc's buffers while another thread that checked "tracing"
without the GIL (a raw allocation: a thread state, a C extension's buffer) is waiting for
the GIL to record its allocation; it then writes to freed memory. Fixed in 3.12.9 and
3.13.2, never in 3.11.
"""


def other_threads() -> list[str]:
    """Names of live threads besides the main thread, the caller and the guard's own."""
    current, main = threading.current_thread(), threading.main_thread()
    return [
        thread.name
        for thread in threading.enumerate()
        if thread is not current
        and thread is not main
        and not thread.name.startswith("runtime-guard")
    ]


def thread_idents() -> frozenset[int]:
    """Idents of the live threads besides the caller's: compare two to see threads churn."""
    current = threading.get_ident()
    return frozenset(t.ident for t in threading.enumerate() if t.ident and t.ident != current)


def stop_is_safe(previous: frozenset[int] | None = None, now: frozenset[int] | None = None) -> bool:
    """True when stopping tracemalloc now should not run into CPython gh-128679.

    Always on a fixed Python. On an affected one, when no thread runs besides the main
    thread and the guard's own, or when the threads are the same as ``previous`` (from
    :func:`thread_idents` a moment ago; ``now`` saves a second look): no thread is
    starting or ending, which is where Python code itself allocates without the GIL. A C
    extension that allocates with the GIL released stays a risk nobody can see from here.
    """
    if not STOP_MAY_CRASH or not other_threads():
        return True
    if previous is None:
        return False
    return (thread_idents() if now is None else now) == previous


class TracemallocSession:
    """Tracemalloc for a bounded stretch, without disturbing a host that runs it already.

    ``start()`` starts tracemalloc with ``frames`` frames unless it is already tracing, in
    which case the host's tracing is used as it is and never stopped; ``stop()`` stops it
    only if this session started it. Also a context manager.
    """

    def __init__(self, frames: int = DEFAULT_FRAMES) -> None:
        self.frames = frames
        """Frame depth used when this session starts tracemalloc."""
        self.owned = False
        """True while tracemalloc runs because this session started it."""
        self.seconds_on = 0.0
        """Seconds tracemalloc ran because of this session (zero when the host ran it)."""
        self._started_at: float | None = None

    @property
    def traced_seconds(self) -> float:
        """:attr:`seconds_on` plus the current stretch, while this session runs tracemalloc."""
        started = self._started_at
        running = time.monotonic() - started if started is not None and self.owned else 0.0
        return self.seconds_on + running

    @property
    def active(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._started_at is not None

    def start(self) -> None:
        if self._started_at is not None:
            return
        if tracemalloc.is_tracing():
            self.owned = False
        else:
            tracemalloc.start(self.frames)
            self.owned = True
        self._started_at = time.monotonic()

    def snapshot(self) -> tracemalloc.Snapshot:
        """Take a snapshot now (``start()`` first)."""
        return tracemalloc.take_snapshot()

    def stop(self) -> None:
        started, self._started_at = self._started_at, None
        if started is None:
            return
        if self.owned:
            self.owned = False
            if tracemalloc.is_tracing():
                tracemalloc.stop()
            self.seconds_on += time.monotonic() - started

    def __enter__(self) -> TracemallocSession:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
