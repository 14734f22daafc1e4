"""The checkout hooks on SQLAlchemy, psycopg_pool and redis-py pools, each put in place once
its library is imported (before or after the guard) and taken off exactly.

SQLAlchemy: ``Pool.connect`` (the checkout of every engine's pool) is wrapped, and the
pool's own ``checkin`` event is listened to on the ``Pool`` class. psycopg_pool:
``getconn``/``putconn`` of the sync and async pools are wrapped (``connection()`` goes
through them). redis-py: ``get_connection``/``release`` of the sync and async pools, the
path of every command. Each hook records the checkout with the user's line that asked for
the connection, and counts the requests inside the checkout (the waiters); that is the
whole per-checkout cost (measured in ``benchmarks/bench_resources.py``).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

from runtime_guard import _fork
from runtime_guard._users import Users
from runtime_guard.pools.checkouts import (
    MAX_CHECKOUTS,
    Checkout,
    PoolFigures,
    PoolRegistry,
    PoolWatch,
    default_registry,
)
from runtime_guard.tracking import sites as _sites
from runtime_guard.tracking.imports import ImportWatcher
from runtime_guard.tracking.patching import Patch, replace, restore
from runtime_guard.tracking.registry import default_registry as _tracked

__all__ = ["LIBRARIES", "PoolHooks", "default_hooks"]

_log = logging.getLogger("runtime_guard")

LIBRARIES = ("sqlalchemy", "psycopg_pool", "redis")
"""The pool libraries whose checkouts are watched."""

# redis-py's own long-lived holders: a client made with ``single_connection_client=True``,
# a ``MONITOR`` and a pub/sub subscriber keep their connection for their whole life.
_REDIS_HOLDERS = frozenset({"Redis.__init__", "Monitor.__init__", "PubSub.execute_command"})

# redis-py's default max_connections is 2**31: no real bound.
_UNBOUNDED = 1 << 30
# Keys for checkouts whose connection was collected unreturned: its id() is free for the
# next connection, and the lost checkout must not be overwritten by that one's. Negative,
# so never an id().
_LOST_KEYS = itertools.count(-1, -1)


def _remove(watch: PoolWatch, key: int) -> bool:
    if watch.checkouts.pop(key, None) is not None:
        return True
    if watch.uncounted:
        watch.uncounted -= 1
        return True
    return False


# -- figures and names of each library's pools ---------------------------------------------


def _sqlalchemy_name(pool: Any) -> str:
    named = getattr(pool, "logging_name", None)
    if named:
        return str(named)
    # The engine that owns the pool, among the live engines tracked as known clients: its
    # URL (password hidden) is what a person recognises.
    for rec in list(_tracked.store.records.values()):
        if rec.entry.name == "sqlalchemy.Engine":
            engine = rec()
            if engine is not None and getattr(engine, "pool", None) is pool:
                return str(engine.url.render_as_string(hide_password=True))
    dialect = getattr(getattr(pool, "_dialect", None), "name", "sqlalchemy")
    return f"{dialect} {type(pool).__name__}"


def _sqlalchemy_figures(pool: Any, watch: PoolWatch) -> PoolFigures:
    if not callable(getattr(pool, "checkedout", None)):  # NullPool, StaticPool...
        return PoolFigures(None, watch.held(), None, 0, watch.requests)
    max_overflow = getattr(pool, "_max_overflow", -1)
    steady = pool.size()
    size = steady + max_overflow if steady and max_overflow >= 0 else None
    # Requests still inside Pool.connect() are the waiters: the pool's queue holds them.
    overflow = max(pool.overflow(), 0)
    return PoolFigures(size, pool.checkedout(), pool.checkedin(), overflow, watch.requests)


def _psycopg_name(pool: Any) -> str:
    name = str(getattr(pool, "name", "") or "psycopg_pool")
    try:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(pool.conninfo)
    except Exception:
        return name
    where = "/".join(str(info[k]) for k in ("host", "dbname") if info.get(k))
    return f"{name} ({where})" if where else name


def _psycopg_figures(pool: Any, watch: PoolWatch) -> PoolFigures:
    # In use from the checkouts seen: the pool's own size minus available also counts
    # connections its workers are still opening or resetting.
    stats = pool.get_stats()
    size = int(stats.get("pool_size", 0))
    return PoolFigures(
        int(stats["pool_max"]) if "pool_max" in stats else None,
        watch.held(),
        int(stats.get("pool_available", 0)),
        max(size - int(stats.get("pool_min", size)), 0),
        int(stats.get("requests_waiting", -1)),
    )


def _redis_name(pool: Any) -> str:
    kwargs = getattr(pool, "connection_kwargs", {}) or {}
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


def _redis_figures(pool: Any, watch: PoolWatch) -> PoolFigures:
    most = getattr(pool, "max_connections", None)
    size = int(most) if isinstance(most, int) and most < _UNBOUNDED else None
    available = getattr(pool, "_available_connections", None)
    idle = len(available) if isinstance(available, list) else None
    # Requests still inside get_connection are the waiters: a blocking pool holds them there.
    return PoolFigures(size, watch.held(), idle, 0, watch.requests)


def _same(connection: Any) -> Any:
    return connection


def _fairy_record(fairy: Any) -> Any:
    # The checkin event names the pool entry, not the proxy Pool.connect() returned.
    return fairy._connection_record


def _fairy_connection(fairy: Any) -> Any:
    return fairy.dbapi_connection


class _Library(NamedTuple):
    kind: str
    name: Callable[[Any], str]
    read: Callable[[Any, PoolWatch], PoolFigures]
    key: Callable[[Any], Any] = _same
    """What a return is matched by, from what the checkout returned."""
    held: Callable[[Any], Any] | None = None
    """The driver connection to hold for its transaction state (pools that keep it)."""
    watch_loss: bool = False
    """Whether the pool lets go of a checked-out connection (psycopg_pool does): its
    collection before it is returned then means a slot lost for good."""
    holders: frozenset[str] = frozenset()
    """Qualified names of the library's callers that hold a connection by design."""


_SQLALCHEMY = _Library(
    "sqlalchemy",
    _sqlalchemy_name,
    _sqlalchemy_figures,
    key=_fairy_record,
    held=_fairy_connection,
)
_PSYCOPG_POOL = _Library("psycopg_pool", _psycopg_name, _psycopg_figures, watch_loss=True)
_REDIS = _Library("redis", _redis_name, _redis_figures, holders=_REDIS_HOLDERS)


# -- the hooks -------------------------------------------------------------------------------


class PoolHooks:
    """Puts the checkout hooks on each pool library once it is imported; takes them off.

    Enabling is counted: every guard's pool component enables the same hooks
    (:data:`default_hooks`) once, and they come off when the last one disables them, so two
    guards in a process never wrap a pool twice.
    """

    def __init__(self, registry: PoolRegistry) -> None:
        self.registry = registry
        """Where checkouts are recorded."""
        self.watcher = ImportWatcher()
        """Reaches the libraries imported after :meth:`enable`."""
        self.installed: list[str] = []
        """The libraries hooked now."""
        self._patches: list[Patch] = []
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._warned: set[str] = set()
        self._users = Users()

    @property
    def enabled(self) -> bool:
        """Whether the hooks are in place (or waiting for their libraries)."""
        return self._users.any

    def enable(self) -> None:
        """Hook every pool library now or once it is imported."""
        if not self._users.add():
            return
        for module, install in (
            ("sqlalchemy", self._sqlalchemy),
            ("psycopg_pool", self._psycopg_pool),
            ("redis.connection", self._redis),
            ("redis.asyncio.connection", self._redis),
        ):
            self.watcher.watch(module, self._guarded(install))

    def disable(self) -> None:
        """Take every hook off once the last user disables them; the libraries are exactly
        as before."""
        if not self._users.remove():
            return
        self.watcher.clear()
        restore(self._patches)
        for target, name, listener in reversed(self._listeners):
            try:
                from sqlalchemy import event

                event.remove(target, name, listener)
            except Exception:
                _log.warning("runtime_guard: could not remove the SQLAlchemy %s listener", name)
        self._listeners.clear()
        self.installed.clear()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it at the fork)."""
        self._users.after_fork()

    def _guarded(self, install: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
        def run(module: ModuleType) -> None:
            try:
                install(module)
            except Exception:  # never break the host's import
                _log.warning(
                    "runtime_guard: cannot watch the pools of %s", module.__name__, exc_info=True
                )

        return run

    def _warn_once(self, key: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning("runtime_guard: recording a %s checkout failed", key, exc_info=True)

    # -- SQLAlchemy: Pool.connect, and its checkin event ------------------------------------

    def _sqlalchemy(self, module: ModuleType) -> None:
        # Pool.connect is wrapped rather than listened to through the checkout event: a
        # checkout listener takes SQLAlchemy's checkout off its fast path (measured: 0.5 us
        # more), and the wrapper also sees the pool and the requests waiting inside it.
        from sqlalchemy import event
        from sqlalchemy.pool import Pool

        original = Pool.__dict__.get("connect")
        if not inspect.isfunction(original):
            return
        watches = self.registry.watches

        def on_checkin(dbapi_connection: Any, record: Any) -> None:
            # The event does not name the pool: the entry is looked for in each (a few).
            key = id(record)
            for watch in list(watches.values()):
                if watch.kind == "sqlalchemy" and watch.checkouts.pop(key, None) is not None:
                    return

        replace(self._patches, Pool, "connect", self._getter(original, _SQLALCHEMY))
        event.listen(Pool, "checkin", on_checkin)
        self._listeners.append((Pool, "checkin", on_checkin))
        self.installed.append("sqlalchemy")

    # -- psycopg_pool: getconn and putconn --------------------------------------------------

    def _psycopg_pool(self, module: ModuleType) -> None:
        for cls_name in ("ConnectionPool", "AsyncConnectionPool"):
            cls = getattr(module, cls_name, None)
            if isinstance(cls, type):
                self._wrap_pool(cls, "getconn", "putconn", _PSYCOPG_POOL)
        self.installed.append("psycopg_pool")

    # -- redis-py: get_connection and release -----------------------------------------------

    def _redis(self, module: ModuleType) -> None:
        for cls_name in ("ConnectionPool", "BlockingConnectionPool"):
            cls = getattr(module, cls_name, None)
            if isinstance(cls, type):
                self._wrap_pool(cls, "get_connection", "release", _REDIS)
        if "redis" not in self.installed:
            self.installed.append("redis")

    def _wrap_pool(self, cls: type, get: str, put: str, library: _Library) -> None:
        original_get = cls.__dict__.get(get)
        original_put = cls.__dict__.get(put)
        if not (inspect.isfunction(original_get) and inspect.isfunction(original_put)):
            return
        getter = self._getter(original_get, library)
        putter = self._putter(original_put)
        replace(self._patches, cls, get, getter)
        replace(self._patches, cls, put, putter)

    def _getter(self, original: Callable[..., Any], library: _Library) -> Callable[..., Any]:
        # Everything is bound once as closure cells and the recording is inlined: this runs
        # on every checkout (for redis, every command).
        registry, watches, capture = self.registry, self.registry.watches, _sites.capture
        getframe, get_ident, warn = sys._getframe, threading.get_ident, self._warn_once
        kind, name, read, key, held, watch_loss, holders = library

        def record(watch: PoolWatch, connection: Any) -> None:
            try:
                checkouts = watch.checkouts
                found = id(key(connection))
                earlier = checkouts.get(found)
                if earlier is not None and earlier.lost and len(checkouts) < MAX_CHECKOUTS:
                    checkouts[next(_LOST_KEYS)] = earlier
                if found in checkouts or len(checkouts) < MAX_CHECKOUTS:
                    checkout = checkouts[found] = Checkout(
                        capture(2),
                        registry.clock(),
                        get_ident(),
                        None if held is None else held(connection),
                        bool(holders) and getframe(2).f_code.co_qualname in holders,
                    )
                    if watch_loss:
                        checkout.watch_loss(connection)
                else:
                    watch.uncounted += 1
            except Exception:
                warn(kind)

        if inspect.iscoroutinefunction(original):

            async def aget(pool: Any, *args: Any, **kwargs: Any) -> Any:
                watch = watches.get(id(pool)) or registry.watch(pool, kind, name, read)
                watch.requests += 1
                try:
                    connection = await original(pool, *args, **kwargs)
                finally:
                    watch.requests -= 1
                record(watch, connection)
                return connection

            aget.__wrapped__ = original  # type: ignore[attr-defined]
            return aget

        def get(pool: Any, *args: Any, **kwargs: Any) -> Any:
            watch = watches.get(id(pool)) or registry.watch(pool, kind, name, read)
            watch.requests += 1
            try:
                connection = original(pool, *args, **kwargs)
            finally:
                watch.requests -= 1
            record(watch, connection)
            return connection

        get.__wrapped__ = original  # type: ignore[attr-defined]
        return get

    def _putter(self, original: Callable[..., Any]) -> Callable[..., Any]:
        watches = self.registry.watches

        def forget(pool: Any, connection: Any) -> None:
            watch = watches.get(id(pool))
            if watch is not None:
                _remove(watch, id(connection))

        if inspect.iscoroutinefunction(original):

            async def aput(pool: Any, connection: Any, *args: Any, **kwargs: Any) -> Any:
                forget(pool, connection)
                return await original(pool, connection, *args, **kwargs)

            aput.__wrapped__ = original  # type: ignore[attr-defined]
            return aput

        def put(pool: Any, connection: Any, *args: Any, **kwargs: Any) -> Any:
            forget(pool, connection)
            return original(pool, connection, *args, **kwargs)

        put.__wrapped__ = original  # type: ignore[attr-defined]
        return put


default_hooks = PoolHooks(default_registry)
"""The hooks that feed :data:`~runtime_guard.pools.checkouts.default_registry`."""

_fork.after_fork_in_child(default_hooks.after_fork)
