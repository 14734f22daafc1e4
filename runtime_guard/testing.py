"""Helpers for tests of code that uses the guard: a probe you steer, a clock you move, a
guard built on both, and :func:`reset` to start each test from a clean process state."""

from __future__ import annotations

from typing import Any

from runtime_guard import _install, limiters, looplag, shedding, stuck
from runtime_guard.config import Config
from runtime_guard.diagnosis import roots
from runtime_guard.guard import Guard
from runtime_guard.pools import checkouts as pools
from runtime_guard.probes import Reading
from runtime_guard.tracking import registry as tracking

__all__ = ["FakeProbe", "ManualClock", "make_guard", "reset"]


class FakeProbe:
    """A memory source whose figures the test sets: for deterministic logic tests only.

    Set :attr:`usage` (bytes) or call :meth:`set_fraction`; :attr:`rss` follows usage
    unless set on its own.
    """

    def __init__(self, limit: int = 1024 * 1024 * 1024, usage: int = 0) -> None:
        self.limit = limit
        self.usage = usage
        self.rss: int | None = None
        self.process_limit: int | None = None
        self.reads = 0

    @property
    def sources(self) -> dict[str, str]:
        return {"rss": "fake", "usage": "fake", "limit": "fake"}

    def set_fraction(self, fraction: float) -> None:
        self.usage = int(self.limit * fraction)

    def read(self) -> Reading:
        self.reads += 1
        rss = self.usage if self.rss is None else self.rss
        fraction = self.usage / self.limit
        if self.process_limit:
            fraction = max(fraction, rss / self.process_limit)
        return Reading(rss, self.usage, self.limit, fraction)

    def discover(self) -> None:
        pass

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


class ManualClock:
    """A monotonic clock the test moves by hand (``clock.now += 30``), for the components'
    injectable ``clock`` (relief cool-down, shedding holds, restart delay)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        """The time it reads, in seconds."""

    def __call__(self) -> float:
        return self.now


def make_guard(
    probe: FakeProbe | None = None, clock: ManualClock | None = None, **options: Any
) -> Guard:
    """Return an unstarted guard on ``probe`` with the standard components attached.

    Samples are taken only when the test calls ``guard.sample()``; ``clock`` (a
    :class:`ManualClock`) drives every delay and window when given. Call ``guard.stop()``
    when done. Environment variables are ignored, so the test sees only ``options``.
    """
    guard = Guard(Config.from_options(options, environ={}), probe=probe or FakeProbe(), clock=clock)
    try:
        _install.attach_components(guard)
    except BaseException:
        guard.stop()  # the components attached before the failing one undo their hooks
        raise
    return guard


def reset() -> None:
    """Put the process back as it was before any guard: uninstall the process-wide guard,
    restore every shed feature and forget the declared features, caches and limiters;
    untrack every tracked class (each is restored exactly) and forget the records, the
    ``marker()`` and the warnings already logged; forget the pools seen and the runs with
    a deadline in progress, the event-loop lag measured and the application objects
    registered for the leak diagnosis.

    Call it in a fixture, after each test that declares features, tracks classes or
    installs a guard.
    """
    _install.uninstall()
    shedding.default_registry.clear()
    limiters.default_registry.clear()
    tracking.default_registry.reset()
    pools.default_registry.clear()
    stuck.default_registry.clear()
    looplag.default_monitor.forget()
    roots.forget()
