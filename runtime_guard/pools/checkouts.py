"""Connections checked out of pools: who holds each one, since when, and in what state.

The hooks of :mod:`~runtime_guard.pools.hooks` call :meth:`PoolRegistry.checkout` and
:meth:`PoolRegistry.checkin` on every checkout and return; each checkout keeps the cheap
creation site of :mod:`runtime_guard.tracking.sites` (the user's line that asked for the
connection), the time and the thread. A pool is known from its first checkout and forgotten
when it is collected. Nothing here judges: :mod:`~runtime_guard.pools.component` does.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from runtime_guard import _fork
from runtime_guard.tracking.sites import Site

__all__ = [
    "MAX_CHECKOUTS",
    "Checkout",
    "PoolFigures",
    "PoolRegistry",
    "PoolWatch",
    "default_registry",
    "transaction_state",
]

MAX_CHECKOUTS = 10_000
"""Checkouts remembered per pool; past this many (a pool of unbounded size whose
connections are never returned) further ones are counted but not attributed."""

# libpq's PQtransactionStatus, which psycopg 3 and psycopg2 both expose as
# ``connection.info.transaction_status``.
_TRANSACTION_STATES = {
    0: "idle",
    1: "active",
    2: "idle in transaction",
    3: "idle in transaction (aborted)",
    4: "unknown",
}


def transaction_state(connection: Any) -> str | None:
    """``"idle in transaction"`` and the like for a psycopg connection, else ``None``.

    Reads ``connection.info.transaction_status``, a field of the client library (no round
    trip to the server), so it is safe from another thread while the connection is in use.
    """
    try:
        status = connection.info.transaction_status
    except Exception:
        return None
    try:
        return _TRANSACTION_STATES.get(int(status))
    except (TypeError, ValueError):
        return None


class Checkout:
    """One connection out of its pool: where it was asked for, when, and by which thread."""

    __slots__ = ("_weak", "held", "ident", "long_lived", "lost", "reported", "since", "site")

    def __init__(
        self, site: Site, since: float, ident: int, held: Any = None, long_lived: bool = False
    ) -> None:
        # Positional and plain: made on every checkout (measured in bench_resources.py).
        self.site = site
        """Where the connection was checked out (the first frame in the user's code)."""
        self.since = since
        """When, on the pool registry's clock (``time.monotonic()``)."""
        self.ident = ident
        """The checking-out thread's ``threading.get_ident()``."""
        self.held = held
        """The driver's connection, held strongly where its pool holds it anyway (SQLAlchemy),
        for its transaction state; ``None`` otherwise."""
        self.long_lived = long_lived
        """Held for its holder's whole life by design (a redis pub/sub subscriber): counted
        in use, never reported as held too long."""
        self.lost = False
        """The connection was collected without being returned (its pool slot is gone)."""
        self.reported = False
        """Whether ``checkout_held`` was sent for it."""
        self._weak: weakref.ref[Any] | None = None

    def watch_loss(self, connection: Any) -> None:
        """Hold ``connection`` weakly, for a pool that lets go of what it lends (psycopg_pool):
        its collection before it is returned marks this checkout :attr:`lost`."""
        try:
            self._weak = weakref.ref(connection, self._lose)
        except TypeError:  # no weak references: no transaction state either
            self._weak = None

    def _lose(self, _: Any) -> None:
        self.lost = True

    @property
    def connection(self) -> Any:
        """The driver's connection while it is alive and known (for its transaction state)."""
        if self.held is not None:
            return self.held
        return None if self._weak is None else self._weak()

    def seconds(self, now: float) -> float:
        """Seconds held at ``now`` (on the pool registry's clock)."""
        return max(now - self.since, 0.0)

    def state(self) -> str | None:
        """The connection's transaction state (``"idle in transaction"``...), when known."""
        if self.lost:
            return "lost: collected without being returned"
        connection = self.connection
        return None if connection is None else transaction_state(connection)

    def thread_name(self) -> str:
        """The holding thread's name, or its ident when it has ended."""
        for thread in threading.enumerate():
            if thread.ident == self.ident:
                return thread.name
        return f"ended thread {self.ident}"

    def to_dict(self, now: float, pool: str = "") -> dict[str, Any]:
        """JSON-ready: the site with its stack, the seconds held, state and thread."""
        return {
            "pool": pool,
            **self.site.to_dict(),
            "seconds": round(self.seconds(now), 3),
            "state": self.state(),
            "thread": self.thread_name(),
            "long_lived": self.long_lived,
        }

    def __repr__(self) -> str:
        return f"<Checkout at {self.site}>"


class PoolFigures(NamedTuple):
    """What a pool holds now, as its library tells it; ``None``/``-1`` where it cannot."""

    size: int | None
    """Most connections the pool will open (pool size plus overflow); ``None``: unbounded
    or unknown."""
    in_use: int
    """Connections checked out now."""
    idle: int | None
    """Connections open and waiting in the pool."""
    overflow: int
    """Connections open beyond the pool's steady size (SQLAlchemy's overflow)."""
    waiting: int
    """Requests waiting for a connection; ``-1`` when the pool cannot tell."""


class PoolWatch:
    """One pool seen checking out connections: its checkouts and how to read its figures."""

    def __init__(
        self,
        pool: Any,
        kind: str,
        name: str,
        read: Callable[[Any, PoolWatch], PoolFigures],
        on_gone: Callable[[PoolWatch], None],
    ) -> None:
        self.kind = kind
        """``"sqlalchemy"``, ``"psycopg_pool"`` or ``"redis"``."""
        self.name = name
        """The pool's name in reports and metrics (its URL without password, or its name)."""
        self.checkouts: dict[int, Checkout] = {}
        """Connections out now, keyed by the hook's key for the checkout."""
        self.uncounted = 0
        """Checkouts out now beyond :data:`MAX_CHECKOUTS`, not attributed."""
        self.requests = 0
        """Requests inside the pool's checkout now (hooks that wrap it count them)."""
        self.exhausted_since: float | None = None
        """Since when (sample clock) the pool has had waiters and no free connection."""
        self.free_since: float | None = None
        """Since when an exhaustion episode has looked over (sample clock)."""
        self.exhausted_reported = False
        """Whether ``pool_exhausted`` was sent in the current episode."""
        self._read = read
        self._pool = weakref.ref(pool, lambda _: on_gone(self))

    @property
    def pool(self) -> Any:
        """The pool object, while it is alive."""
        return self._pool()

    def figures(self) -> PoolFigures | None:
        """The pool's figures now (``None`` once the pool is gone or cannot be read)."""
        pool = self._pool()
        if pool is None:
            return None
        try:
            return self._read(pool, self)
        except Exception:  # a library changed its internals: the pool goes unread
            return None

    def held(self) -> int:
        """Checkouts out now that this watch saw."""
        return len(self.checkouts) + self.uncounted

    def longest(self, now: float, count: int = 5) -> list[Checkout]:
        """The ``count`` checkouts held longest, longest first."""
        out = sorted(list(self.checkouts.values()), key=lambda c: c.since)
        return out[:count]


class PoolRegistry:
    """The pools seen in this process and their checkouts.

    The process has one, :data:`default_registry`, fed by the hooks the installed guard's
    pool component puts in place; a test can give a component its own.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock: Callable[[], float] = clock or time.monotonic
        """The clock checkouts are timed with (a test can move a hand-driven one)."""
        self.watches: dict[int, PoolWatch] = {}
        """Pools by ``id()``, removed when the pool is collected."""
        self._lock = threading.Lock()

    def watch(
        self,
        pool: Any,
        kind: str,
        name: Callable[[Any], str],
        read: Callable[[Any, PoolWatch], PoolFigures],
    ) -> PoolWatch:
        """The watch of ``pool``, made on first sight (``name(pool)`` names it then)."""
        found = self.watches.get(id(pool))
        if found is not None:
            return found
        with self._lock:
            found = self.watches.get(id(pool))
            if found is None:
                try:
                    shown = name(pool)
                except Exception:
                    shown = f"{kind} {type(pool).__name__}"
                shown = self._unique(shown)
                found = self.watches[id(pool)] = PoolWatch(pool, kind, shown, read, self._gone)
            return found

    def _unique(self, name: str) -> str:
        taken = {w.name for w in self.watches.values()}
        if name not in taken:
            return name
        number = 2
        while f"{name} #{number}" in taken:
            number += 1
        return f"{name} #{number}"

    def _gone(self, watch: PoolWatch) -> None:
        for key, found in list(self.watches.items()):
            if found is watch:
                self.watches.pop(key, None)

    def all(self) -> list[PoolWatch]:
        """Every pool watched now, in the order first seen."""
        return list(self.watches.values())

    def clear(self) -> None:
        """Forget every pool and checkout (for tests: ``runtime_guard.testing.reset``)."""
        with self._lock:
            self.watches.clear()

    def after_fork(self) -> None:
        """In a forked child: the parent's checkouts are not this process's; fresh lock."""
        self._lock = threading.Lock()
        for watch in self.watches.values():
            watch.checkouts.clear()
            watch.uncounted = watch.requests = 0
            watch.exhausted_since = watch.free_since = None
            watch.exhausted_reported = False


default_registry = PoolRegistry()
"""The registry the pool hooks record into."""
_fork.after_fork_in_child(default_registry.after_fork)
