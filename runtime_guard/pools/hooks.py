"""The checkout hooks on SQLAlchemy, psycopg_pool and redis-py pools, each put in place once
its library is imported (before or after the guard) and taken off exactly.

SQLAlchemy: its own pool events, ``checkout`` and ``checkin``, listened to on the ``Pool``
class (every pool of every engine). psycopg_pool: ``getconn``/``putconn`` of the sync and
async pools are wrapped (``connection()`` goes through them). redis-py:
``get_connection``/``release`` of the sync and async pools, the path of every command. Each
hook records the checkout with the user's line that asked for the connection; that is the
whole per-checkout cost (measured in ``benchmarks/bench_pools.py``).
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

from runtime_guard.pools.checkouts import (
    MAX_CHECKOUTS,
    Checkout,
    PoolFigures,
    PoolRegistry,
    PoolWatch,
)
from runtime_guard.tracking import sites as _sites
from runtime_guard.tracking.imports import ImportWatcher
from runtime_guard.tracking.patching import Patch, replace, restore
from runtime_guard.tracking.registry import default_registry as _tracked

__all__ = ["LIBRARIES", "PoolHooks"]

_log = logging.getLogger("runtime_guard")

LIBRARIES = ("sqlalchemy", "psycopg_pool", "redis")
"""The pool libraries whose checkouts are watched."""

# redis-py's own long-lived holders: a client made with ``single_connection_client=True``,
# a ``MONITOR`` and a pub/sub subscriber keep their connection for their whole life.
_REDIS_HOLDERS = frozenset({"Redis.__init__", "Monitor.__init__", "PubSub.execute_command"})

# redis-py's default max_connections is 2**31: no real bound.
_UNBOUNDED = 1 << 30


def _add(
    watch: PoolWatch,
    key: int,
    site: _sites.Site,
    since: float,
    connection: Any = None,
    *,
    watch_loss: bool = False,
    long_lived: bool = False,
) -> None:
    checkouts = watch.checkouts
    if key in checkouts or len(checkouts) < MAX_CHECKOUTS:
        checkouts[key] = Checkout(
            site,
            since,
            threading.get_ident(),
            connection,
            watch_loss=watch_loss,
            long_lived=long_lived,
        )
    else:
        watch.uncounted += 1


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


def _sqlalchemy_waiters(pool: Any) -> int:
    queue = getattr(pool, "_pool", None)
    condition = getattr(queue, "not_empty", None)
    if condition is not None:  # a thread waits on the queue's condition
        return len(condition._waiters)
    # The asyncio queue is made on first use; reading it through its property from this
    # thread would make one here.
    inner = getattr(queue, "__dict__", {}).get("_queue")
    getters = getattr(inner, "_getters", None)
    if getters is not None:
        return sum(1 for future in list(getters) if not future.done())
    return -1


def _sqlalchemy_figures(pool: Any, watch: PoolWatch) -> PoolFigures:
    if not callable(getattr(pool, "checkedout", None)):  # NullPool, StaticPool...
        return PoolFigures(None, watch.held(), None, 0, -1)
    max_overflow = getattr(pool, "_max_overflow", -1)
    steady = pool.size()
    size = steady + max_overflow if steady and max_overflow >= 0 else None
    return PoolFigures(
        size,
        pool.checkedout(),
        pool.checkedin(),
        max(pool.overflow(), 0),
        _sqlalchemy_waiters(pool),
    )


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
    stats = pool.get_stats()
    size, available = int(stats.get("pool_size", 0)), int(stats.get("pool_available", 0))
    return PoolFigures(
        int(stats["pool_max"]) if "pool_max" in stats else None,
        max(size - available, 0),
        available,
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


class _Library(NamedTuple):
    kind: str
    name: Callable[[Any], str]
    read: Callable[[Any, PoolWatch], PoolFigures]
    watch_loss: bool = False
    """Whether the pool lets go of a checked-out connection (psycopg_pool does): its
    collection before it is returned then means a slot lost for good."""
    holders: frozenset[str] = frozenset()
    """Qualified names of the library's callers that hold a connection by design."""


_SQLALCHEMY = _Library("sqlalchemy", _sqlalchemy_name, _sqlalchemy_figures)
_PSYCOPG_POOL = _Library("psycopg_pool", _psycopg_name, _psycopg_figures, watch_loss=True)
_REDIS = _Library("redis", _redis_name, _redis_figures, holders=_REDIS_HOLDERS)


# -- the hooks -------------------------------------------------------------------------------


class PoolHooks:
    """Puts the checkout hooks on each pool library once it is imported; takes them off."""

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

    def enable(self) -> None:
        """Hook every pool library now or once it is imported."""
        for module, install in (
            ("sqlalchemy", self._sqlalchemy),
            ("psycopg_pool", self._psycopg_pool),
            ("redis.connection", self._redis),
            ("redis.asyncio.connection", self._redis),
        ):
            self.watcher.watch(module, self._guarded(install))

    def disable(self) -> None:
        """Take every hook off; the libraries are exactly as before."""
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

    # -- SQLAlchemy: its pool events ----------------------------------------------------------

    def _sqlalchemy(self, module: ModuleType) -> None:
        from sqlalchemy import event
        from sqlalchemy.pool import Pool

        registry, watches, capture = self.registry, self.registry.watches, _sites.capture

        def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            try:
                pool = proxy._pool
                watch = watches.get(id(pool))
                if watch is None:
                    watch = registry.watch(
                        pool, _SQLALCHEMY.kind, _SQLALCHEMY.name, _SQLALCHEMY.read
                    )
                _add(watch, id(record), capture(1), registry.clock(), dbapi_connection)
            except Exception:
                self._warn_once("sqlalchemy")

        def on_checkin(dbapi_connection: Any, record: Any) -> None:
            key = id(record)
            for watch in list(watches.values()):
                if watch.kind == "sqlalchemy" and _remove(watch, key):
                    return

        for name, listener in (("checkout", on_checkout), ("checkin", on_checkin)):
            event.listen(Pool, name, listener)
            self._listeners.append((Pool, name, listener))
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
        # Bound once as closure cells: this runs on every checkout (for redis, every command).
        registry, watches, capture, getframe = (
            self.registry,
            self.registry.watches,
            _sites.capture,
            sys._getframe,
        )
        warn = self._warn_once
        kind, name, read, watch_loss, holders = library

        def record(pool: Any, watch: PoolWatch, connection: Any) -> None:
            try:
                long_lived = bool(holders) and getframe(2).f_code.co_qualname in holders
                _add(
                    watch,
                    id(connection),
                    capture(2),
                    registry.clock(),
                    connection if watch_loss else None,
                    watch_loss=watch_loss,
                    long_lived=long_lived,
                )
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
                record(pool, watch, connection)
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
            record(pool, watch, connection)
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
