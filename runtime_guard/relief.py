"""Relief: a full garbage collection, then freed memory handed back to the OS.

``gc.collect()`` frees unreachable cycles, but glibc's allocator keeps freed pages in its
arenas, so RSS (what the OOM killer counts) often does not move; ``malloc_trim(0)`` asks
glibc to return them. Elsewhere (musl, macOS, Windows) there is no such call and relief is
the collection alone.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from runtime_guard import signals
from runtime_guard._component import Component
from runtime_guard._units import format_size
from runtime_guard.pressure import Pressure

if TYPE_CHECKING:
    from runtime_guard.guard import Guard
    from runtime_guard.sample import Sample

__all__ = [
    "ReliefResult",
    "malloc_trim_available",
    "relieve",
    "trim",
]

_log = logging.getLogger("runtime_guard")


@dataclass(frozen=True)
class ReliefResult:
    """What one relief did and what it bought."""

    reason: str
    """Why it ran: ``"manual"`` (``Guard.relieve()``), ``"pressure"`` or ``"cooldown"``."""
    level: Pressure
    """The pressure level when it ran."""
    collected: int
    """Unreachable objects found by ``gc.collect()``."""
    usage_before: int
    """Bytes counted against the limit before relief."""
    usage_after: int
    """Bytes counted against the limit after relief."""
    rss_before: int
    """This process's RSS in bytes before relief."""
    rss_after: int
    """This process's RSS in bytes after relief."""
    trimmed: bool
    """Whether ``malloc_trim(0)`` ran (glibc only)."""
    duration: float
    """Seconds the whole relief took."""
    gc_seconds: float
    """Seconds spent in ``gc.collect()``."""
    trim_seconds: float
    """Seconds spent in ``malloc_trim(0)`` (0 when it did not run)."""

    @property
    def returned(self) -> int:
        """Bytes of RSS given back (never negative: growth meanwhile counts as nothing)."""
        return max(self.rss_before - self.rss_after, 0)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = asdict(self)
        data["level"] = self.level.name.lower()
        data["returned"] = self.returned
        return data

    def __str__(self) -> str:
        trim = "malloc_trim ran" if self.trimmed else "no malloc_trim"
        return (
            f"relief ({self.reason}, {self.level.name}): collected {self.collected:,} objects, "
            f"usage {format_size(self.usage_before)} -> {format_size(self.usage_after)}, "
            f"returned {format_size(self.returned)} to the OS ({trim}) "
            f"in {self.duration * 1000:.1f} ms"
        )


_UNSET: Any = object()
_malloc_trim: Callable[[int], int] | None = _UNSET
_lookup_lock = threading.Lock()


def _find_malloc_trim() -> Callable[[int], int] | None:
    # glibc only: musl has no malloc_trim, and another libc exporting the name might give
    # it other semantics; CS_GNU_LIBC_VERSION exists only on glibc.
    try:
        if not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        import ctypes  # here, at the first trim: it cost every worker 2 ms at start-up

        function = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, ValueError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def _trim_function() -> Callable[[int], int] | None:
    global _malloc_trim
    if _malloc_trim is _UNSET:
        with _lookup_lock:
            if _malloc_trim is _UNSET:
                _malloc_trim = _find_malloc_trim()
    return _malloc_trim


def malloc_trim_available() -> bool:
    """Whether this process can hand freed heap memory back to the OS (glibc)."""
    return _trim_function() is not None


def trim() -> bool:
    """Call ``malloc_trim(0)`` alone (glibc); returns whether it ran."""
    global _malloc_trim
    function = _trim_function()
    if function is None:
        return False
    try:
        function(0)
    except Exception:
        _malloc_trim = None
        _log.exception("runtime_guard: malloc_trim failed; relief is gc.collect() only")
        return False
    return True


def _read(guard: Guard) -> tuple[int, int]:
    reading = guard.read()
    return reading.usage, reading.rss


# One relief at a time: two threads collecting at once only double the pause.
_relief_lock = threading.Lock()


def relieve(guard: Guard, reason: str = "manual") -> ReliefResult:
    """Run ``gc.collect()`` then, on glibc, ``malloc_trim(0)``; send ``gc_forced``.

    Used by :meth:`Guard.relieve` and by the automatic policy. Never raises for a failing
    trim: relief then is the collection alone, and the failure is logged.
    """
    with _relief_lock:
        start = time.perf_counter()
        usage_before, rss_before = _read(guard)
        collected = gc.collect()
        after_gc = time.perf_counter()
        trimmed = trim()
        end = time.perf_counter()
        usage_after, rss_after = _read(guard)
    result = ReliefResult(
        reason=reason,
        level=guard.pressure,
        collected=collected,
        usage_before=usage_before,
        usage_after=usage_after,
        rss_before=rss_before,
        rss_after=rss_after,
        trimmed=trimmed,
        duration=time.perf_counter() - start,
        gc_seconds=after_gc - start,
        trim_seconds=end - after_gc if trimmed else 0.0,
    )
    guard.send(signals.gc_forced, result=result)
    return result


class ReliefComponent(Component):
    """The automatic policy: relief on entering ``relief_at`` or above, then once per cool-down.

    A rise to a level above the one last relieved runs relief at once (memory is climbing
    past what the last relief bought); staying at a level, or falling and coming back,
    waits out the cool-down, so relief never runs in a tight loop.
    """

    name = "relief"

    def __init__(
        self, at: Pressure, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.at = at
        """Lowest level at which relief runs."""
        self.cooldown = cooldown
        """Seconds between reliefs while pressure stays."""
        self.clock = clock
        """Time source for the cool-down (injectable for tests)."""
        self.last: ReliefResult | None = None
        """The last automatic relief, if any."""
        self._last_at: float | None = None
        self._last_level = Pressure.OK
        self._previous = Pressure.OK

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        level = sample.pressure
        entered = level > self._previous
        self._previous = level
        if level < self.at:
            return
        now = self.clock()
        cooled = self._last_at is None or now - self._last_at >= self.cooldown
        if not cooled and level <= self._last_level:
            return
        self._last_at, self._last_level = now, level
        self.last = relieve(guard, "pressure" if entered else "cooldown")

    def health(self, guard: Guard) -> dict[str, Any]:
        return {"last_relief": None if self.last is None else self.last.to_dict()}

    def after_fork(self, guard: Guard) -> None:
        self.last, self._last_at = None, None
        self._last_level = self._previous = Pressure.OK
