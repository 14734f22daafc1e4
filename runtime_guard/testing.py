"""Helpers for tests of code that uses the guard: a probe you steer, a guard built on it."""

from __future__ import annotations

from typing import Any

from runtime_guard.config import Config
from runtime_guard.guard import Guard
from runtime_guard.probes import Reading

__all__ = ["FakeProbe", "ManualClock", "make_guard"]


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


def make_guard(probe: FakeProbe | None = None, **options: Any) -> Guard:
    """Return an unstarted guard on ``probe`` with the standard components attached.

    Samples are taken only when the test calls ``guard.sample()``; call ``guard.stop()``
    when done. Environment variables are ignored, so the test sees only ``options``.
    """
    from runtime_guard._setup import attach_components

    guard = Guard(Config.from_options(options, environ={}), probe=probe or FakeProbe())
    attach_components(guard)
    return guard
