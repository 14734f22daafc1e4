"""Concurrency gates whose capacity shrinks with memory pressure and grows back after.

A limiter declared with a ``deadline`` also notes each holder in
:mod:`runtime_guard.stuck`, so one that holds its slot past the deadline is reported with
where it is; without one, holding costs nothing more.

One limiter serves threads and asyncio tasks (of any loop) at once: its state sits behind
a plain ``threading.Lock`` held only for a few comparisons, never across a wait. Waiters
queue in arrival order and a freed slot is handed to the first of them directly, so a
capacity change or a release can never be missed by a waiter (no lost wake-up) and a
newcomer cannot overtake the queue.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from runtime_guard import _fork, stuck
from runtime_guard.pressure import Pressure, parse_level

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "DEFAULT_AT",
    "Limiter",
    "LimiterRegistry",
    "LimiterTimeout",
    "default_registry",
    "limiter",
]


class LimiterTimeout(TimeoutError):
    """Waiting for a limiter slot took longer than the timeout."""

    def __init__(self, limiter: Limiter, waited: float) -> None:
        self.limiter = limiter
        """The limiter that was full."""
        self.waited = waited
        """Seconds waited."""
        super().__init__(
            f"limiter {limiter.name!r} is full: waited {waited:.3g} s for a slot "
            f"(capacity {limiter.capacity} of {limiter.limit}, {limiter.holders} holding, "
            f"{limiter.waiters} waiting)"
        )


class _ThreadWaiter:
    __slots__ = ("granted", "lock")

    def __init__(self) -> None:
        self.granted = False
        self.lock = threading.Lock()
        self.lock.acquire()

    def wake(self) -> bool:
        self.granted = True
        self.lock.release()
        return True


_aio: Any = None


def _asyncio() -> Any:
    """asyncio, imported where a task first waits and not with this module: ``import
    runtime_guard`` (done by pytest for the plugin in every session) would pay 25 ms for it.
    Kept in a global after: an ``import`` statement on the waiting path cost the 20-task
    benchmark 5%."""
    global _aio
    _aio = importlib.import_module("asyncio")
    return _aio


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _TaskWaiter:
    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.granted = False
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def wake(self) -> bool:
        if self.loop.is_closed():
            return False
        self.granted = True
        if (_aio or _asyncio())._get_running_loop() is self.loop:
            _resolve(self.future)
        else:
            try:
                self.loop.call_soon_threadsafe(_resolve, self.future)
            except RuntimeError:  # the loop closed in between: the slot goes to the next
                self.granted = False
                return False
        return True


class Limiter:
    """A concurrency gate (``with`` and ``async with``) whose capacity follows pressure.

    Capacity is ``limit`` below the first level named in ``at`` and the figure of the
    highest level reached otherwise. When it shrinks, holders already inside finish
    undisturbed; newcomers wait until the number of holders is below the new capacity.
    Build one with :func:`limiter`.
    """

    def __init__(
        self,
        name: str,
        limit: int,
        at: Mapping[Pressure, int],
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> None:
        self.name = name
        """The name shown in ``health()`` and errors."""
        self.limit = limit
        """Capacity without pressure."""
        self.at: dict[Pressure, int] = dict(sorted(at.items()))
        """Capacity from each level up (the strictest of the levels reached applies)."""
        self.timeout = timeout
        """Default seconds to wait for a slot (``None``: wait as long as it takes)."""
        self.deadline = deadline
        """Seconds a holder may keep its slot before ``work_stuck`` reports it (``None``:
        never)."""
        self._holds: dict[int, list[int]] = {}
        self._capacity = limit
        self._held = 0
        self._forgiven = 0
        self._lock = threading.Lock()
        self._waiters: deque[_ThreadWaiter | _TaskWaiter] = deque()

    # -- state ------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """How many may hold a slot now."""
        return self._capacity

    @property
    def holders(self) -> int:
        """How many hold a slot now (may exceed capacity right after it shrank)."""
        return self._held

    @property
    def waiters(self) -> int:
        """How many threads and tasks wait for a slot."""
        return len(self._waiters)

    def capacity_for(self, level: Pressure) -> int:
        """Return the capacity at ``level``."""
        capacity = self.limit
        for threshold, value in self.at.items():
            if level >= threshold:
                capacity = min(capacity, value)
        return capacity

    @property
    def tightest(self) -> int:
        """The smallest capacity any level gives (used in emergency mode)."""
        return min([self.limit, *self.at.values()])

    def set_capacity(self, capacity: int) -> None:
        """Change the capacity now; growing it admits waiters at once."""
        with self._lock:
            self._capacity = max(capacity, 0)
            self._grant_locked()

    def _grant_locked(self) -> None:
        while self._waiters and self._held < self._capacity:
            waiter = self._waiters.popleft()
            if waiter.wake():
                self._held += 1

    def health(self) -> dict[str, Any]:
        """Return the JSON-ready figures shown in ``Guard.health()``."""
        return {
            "limit": self.limit,
            "capacity": self._capacity,
            "holders": self._held,
            "waiters": len(self._waiters),
        }

    # -- holders past the deadline --------------------------------------------------------

    def _hold(self) -> None:
        task = stuck.current_task()
        key = threading.get_ident() if task is None else id(task)
        token = stuck.default_registry.begin(f"limiter {self.name}", self.deadline or 0.0, task)
        self._holds.setdefault(key, []).append(token)

    def _unhold(self) -> None:
        task = stuck.current_task()
        key = threading.get_ident() if task is None else id(task)
        tokens = self._holds.get(key)
        if tokens:
            token = tokens.pop()
        else:
            # Released by another thread or task than the one that acquired it: the slot
            # held longest is the one given back (tokens grow, so each list's first).
            oldest = min(((ts[0], k) for k, ts in list(self._holds.items()) if ts), default=None)
            if oldest is None:
                return
            token, key = oldest
            tokens = self._holds[key]
            tokens.remove(token)
        if not tokens:
            self._holds.pop(key, None)
        stuck.default_registry.end(token)

    # -- threads ----------------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> None:
        """Wait for a slot; raises :class:`LimiterTimeout` after ``timeout`` seconds.

        ``timeout=None`` uses the limiter's default (``limiter(..., timeout=)``).
        """
        with self._lock:
            if self._held < self._capacity and not self._waiters:
                self._held += 1
                if self.deadline is not None:
                    self._hold()
                return
            waiter = _ThreadWaiter()
            self._waiters.append(waiter)
        if timeout is None:
            timeout = self.timeout
        start = time.monotonic()
        granted = waiter.lock.acquire(timeout=-1 if timeout is None else max(timeout, 0))
        if not granted:
            with self._lock:
                granted = waiter.granted  # handed a slot just as the wait ended: keep it
                if not granted:
                    self._waiters.remove(waiter)
        if not granted:
            raise LimiterTimeout(self, time.monotonic() - start)
        if self.deadline is not None:
            self._hold()

    def release(self) -> None:
        """Give a slot back; the first waiter (if capacity allows) gets it."""
        if self.deadline is not None:
            self._unhold()
        with self._lock:
            if self._held <= 0 and self._forgiven > 0:  # a slot taken before fork()
                self._forgiven -= 1
                return
            if self._held <= 0:
                raise RuntimeError(f"limiter {self.name!r} released more often than acquired")
            self._held -= 1
            if self._waiters:
                self._grant_locked()

    def __enter__(self) -> Limiter:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- asyncio ----------------------------------------------------------------------

    async def acquire_async(self, timeout: float | None = None) -> None:
        """Wait for a slot without blocking the loop; raises :class:`LimiterTimeout`."""
        with self._lock:
            if self._held < self._capacity and not self._waiters:
                self._held += 1
                if self.deadline is not None:
                    self._hold()
                return
        await self._wait_async(timeout)
        if self.deadline is not None:
            self._hold()

    async def _wait_async(self, timeout: float | None) -> None:
        asyncio = _aio or _asyncio()

        with self._lock:
            if self._held < self._capacity and not self._waiters:  # room made meanwhile
                self._held += 1
                return
            waiter = _TaskWaiter(asyncio.get_running_loop())
            self._waiters.append(waiter)
        if timeout is None:
            timeout = self.timeout
        start = time.monotonic()
        try:
            if timeout is None:  # the common case skips the timeout's own bookkeeping
                await waiter.future
            else:
                async with asyncio.timeout(timeout):
                    await waiter.future
        except TimeoutError:
            with self._lock:
                if waiter.granted:
                    return
                self._waiters.remove(waiter)
            raise LimiterTimeout(self, time.monotonic() - start) from None
        except BaseException:  # cancelled: a slot handed over meanwhile goes to the next
            with self._lock:
                if waiter.granted:
                    self._held -= 1
                    self._grant_locked()
                else:
                    self._waiters.remove(waiter)
            raise

    async def __aenter__(self) -> Limiter:
        # The uncontended path is inlined (no inner coroutine): measured in
        # benchmarks/bench_shedding.py against asyncio.Semaphore.
        with self._lock:
            if self._held < self._capacity and not self._waiters:
                self._held += 1
                if self.deadline is not None:
                    self._hold()
                return self
        await self._wait_async(None)
        if self.deadline is not None:
            self._hold()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _after_fork_in_child(self) -> None:
        # Only the forking thread lives on in the child: other holders and waiters are
        # gone, and the lock may have been held by one of them.
        self._lock = threading.Lock()
        self._waiters.clear()
        self._forgiven, self._held = self._held, 0
        self._holds.clear()

    def __repr__(self) -> str:
        return (
            f"<Limiter {self.name!r} capacity={self._capacity}/{self.limit} "
            f"holders={self._held} waiters={len(self._waiters)}>"
        )


DEFAULT_AT: Mapping[str, int] = {"high": 3, "critical": 1}
"""Capacities used when ``limiter()`` is given no ``at``."""


def _parse_at(at: Mapping[Any, int]) -> dict[Pressure, int]:
    parsed: dict[Pressure, int] = {}
    for key, value in at.items():
        level = parse_level(key, "at")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"limiter capacity at {level.name} must be a whole number >= 0")
        parsed[level] = value
    return parsed


class LimiterRegistry:
    """The limiters declared in a process, and the pressure their capacities follow.

    :func:`limiter` declares into :data:`default_registry`, which the installed guard's
    shedding drives; a test can give a guard a registry of its own.
    """

    def __init__(self) -> None:
        self._limiters: dict[str, Limiter] = {}
        self._lock = threading.Lock()
        self.level = Pressure.OK
        """The level capacities were last set for."""
        self.emergency = False
        """Whether capacities are at their tightest regardless of the level."""

    def declare(
        self,
        name: str,
        limit: int,
        at: Mapping[Any, int] | None,
        timeout: float | None,
        deadline: float | None = None,
    ) -> Limiter:
        """:func:`limiter` on this registry."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limiter {name!r}: limit must be a whole number >= 1, got {limit!r}")
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"limiter {name!r}: timeout must be seconds >= 0, got {timeout!r}")
        deadline = stuck.check_deadline(deadline, f"limiter {name!r}")
        levels = _parse_at(DEFAULT_AT if at is None else at)
        with self._lock:
            existing = self._limiters.get(name)
            if existing is not None:
                if (existing.limit, existing.at, existing.timeout, existing.deadline) != (
                    limit,
                    dict(sorted(levels.items())),
                    timeout,
                    deadline,
                ):
                    raise ValueError(f"limiter {name!r} is already declared with other arguments")
                return existing
            created = Limiter(name, limit, levels, timeout, deadline)
            created.set_capacity(
                created.tightest if self.emergency else created.capacity_for(self.level)
            )
            self._limiters[name] = created
            return created

    def all(self) -> list[Limiter]:
        """Every declared limiter, in declaration order."""
        with self._lock:
            return list(self._limiters.values())

    def apply_pressure(self, level: Pressure, emergency: bool) -> None:
        """Set every limiter's capacity for ``level`` (tightest in emergency mode)."""
        with self._lock:
            self.level, self.emergency = level, emergency
            limiters = list(self._limiters.values())
        for item in limiters:
            item.set_capacity(item.tightest if emergency else item.capacity_for(level))

    def clear(self) -> None:
        """Forget every limiter and the pressure (for tests: ``runtime_guard.testing.reset``)."""
        with self._lock:
            self._limiters.clear()
            self.level, self.emergency = Pressure.OK, False

    def after_fork(self) -> None:
        """In a forked child: fresh locks; holders and waiters of other threads are gone."""
        self._lock = threading.Lock()
        for item in self._limiters.values():
            item._after_fork_in_child()


default_registry = LimiterRegistry()
"""The registry :func:`limiter` declares into."""
_fork.after_fork_in_child(default_registry.after_fork)


def limiter(
    name: str,
    limit: int,
    at: Mapping[Any, int] | None = None,
    *,
    timeout: float | None = None,
    deadline: float | None = None,
) -> Limiter:
    """Declare (or return the already declared) limiter ``name``.

    ``at`` maps levels (``"high"``, ``Pressure.CRITICAL``, ...) to capacities, default
    ``{"high": 3, "critical": 1}``; a capacity is never above ``limit``. ``timeout`` is the
    default wait in seconds before :class:`LimiterTimeout` (``None``: no timeout).
    ``deadline`` is how long a holder may keep its slot: one that holds it longer is
    reported once by the installed guard, ``signals.work_stuck(task="limiter <name>",
    seconds=..., stack=...)`` with where it is now (``None``: never).
    Declaring the same name again with the same arguments returns the same limiter (module
    reloads); with other arguments it raises ``ValueError``.
    """
    return default_registry.declare(name, limit, at, timeout, deadline)
