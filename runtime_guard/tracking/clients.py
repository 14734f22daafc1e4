"""Known client classes, how each is released, and the import hook that reaches them.

A client is tracked from the moment its module finishes importing, whether that happened
before the guard was installed (patched at once) or after (patched by :class:`ImportWatcher`
right after the module body ran). The watcher answers every other import with one dict
lookup and removes itself once nothing it waits for is left.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = ["CLIENTS", "ClientSpec", "Companion", "ImportWatcher", "watcher"]


def _owns_redis_pool(client: Any) -> bool:
    # A client built on a pool it was given (``connection_pool=``) borrows the pool and
    # holds nothing of its own: not closing it is the documented per-call idiom.
    return bool(getattr(client, "auto_close_connection_pool", True))


# What servers do with sockets: accept connections, listen (asyncio's create_server,
# uvicorn's and gunicorn's binding) and wake their loops (socketpair). A socket made there is
# the server's own, never a client the application forgot to close.
_SERVER_CALLS = frozenset(
    {"accept", "create_server", "socketpair", "_make_self_pipe", "bind_socket", "create_sockets"}
)
_SOCKET_FRAMES = 8


def _owns_socket(sock: Any) -> bool:
    """False for a socket a server made (accepted, listening, a loop's wake-up pair)."""
    frame: Any = sys._getframe(1)
    for _ in range(_SOCKET_FRAMES):
        if frame is None:
            break
        if frame.f_code.co_name in _SERVER_CALLS:
            return False
        frame = frame.f_back
    return True


@dataclass(frozen=True)
class Companion:
    """A method of another class that releases every tracked instance linked to its object.

    ``redis.ConnectionPool.disconnect()`` releases the clients whose ``connection_pool`` it
    is, so ``link`` is ``"connection_pool"``.
    """

    module: str
    """Module that defines the class."""
    attr: str
    """The class's name in that module."""
    methods: tuple[str, ...]
    """Methods that release."""
    link: str
    """Attribute of a tracked instance that holds the companion object."""


@dataclass(frozen=True)
class ClientSpec:
    """One known client class and how an instance of it is released."""

    name: str
    """Public dotted name, used in reports (``redis.Redis``)."""
    module: str
    """Module the class is reached from; tracking starts when it is imported."""
    attr: str
    """The class's name in ``module``."""
    release: tuple[str, ...]
    """Methods whose call releases an instance (missing ones are skipped)."""
    owns: Callable[[Any], bool] | None = None
    """Called after ``__init__``; False means the instance holds nothing to release."""
    companions: tuple[Companion, ...] = ()
    """Methods of other classes that release linked instances."""
    factories: tuple[str, ...] = ()
    """Class methods after which ``owns`` is asked again (they set ownership late)."""


_SYNC_POOLS = (
    Companion("redis.connection", "ConnectionPool", ("disconnect",), "connection_pool"),
    Companion("redis.connection", "BlockingConnectionPool", ("disconnect",), "connection_pool"),
)
_ASYNC_POOLS = (
    Companion(
        "redis.asyncio.connection", "ConnectionPool", ("disconnect", "aclose"), "connection_pool"
    ),
)

CLIENTS: tuple[ClientSpec, ...] = (
    ClientSpec(
        "redis.Redis",
        "redis",
        "Redis",
        ("close", "quit"),
        _owns_redis_pool,
        _SYNC_POOLS,
        ("from_url", "from_pool"),
    ),
    ClientSpec(
        "redis.asyncio.Redis",
        "redis.asyncio",
        "Redis",
        ("aclose", "close"),
        _owns_redis_pool,
        _ASYNC_POOLS,
        ("from_url", "from_pool"),
    ),
    # httpx's ``with`` blocks close the transport without calling ``close()``.
    ClientSpec("httpx.Client", "httpx", "Client", ("close", "__exit__")),
    ClientSpec("httpx.AsyncClient", "httpx", "AsyncClient", ("aclose", "__aexit__")),
    ClientSpec("requests.Session", "requests", "Session", ("close",)),
    ClientSpec("aiohttp.ClientSession", "aiohttp", "ClientSession", ("close",)),
    ClientSpec("psycopg.Connection", "psycopg", "Connection", ("close",)),
    ClientSpec("psycopg.AsyncConnection", "psycopg", "AsyncConnection", ("close",)),
    ClientSpec("sqlalchemy.Engine", "sqlalchemy.engine", "Engine", ("dispose",)),
    ClientSpec("socket.socket", "socket", "socket", ("close", "detach"), _owns_socket),
)
"""Every client tracked by default (``track_clients=True``) once its package is imported."""


def resolve(module: ModuleType, attr: str) -> Any:
    """Return ``module.attr``, following dots in ``attr``; ``None`` when missing."""
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then the callbacks; everything else goes to the real loader."""

    def __init__(self, loader: Any, on_loaded: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._on_loaded = on_loaded

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps its real loader, so introspection (resources, inspect) after
        # the import sees exactly what it would have seen without the guard.
        try:
            module.__loader__ = self._loader
            if module.__spec__ is not None:
                module.__spec__.loader = self._loader
        except AttributeError:
            pass
        self._loader.exec_module(module)
        self._on_loaded(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class ImportWatcher(importlib.abc.MetaPathFinder):
    """Calls back when a watched module has been imported; other imports pass through."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[[ModuleType], None]]] = {}
        self._lock = threading.RLock()
        self._local = threading.local()

    def watch(self, module: str, callback: Callable[[ModuleType], None]) -> None:
        """Call ``callback(module)`` once ``module`` is imported (now, if it already is)."""
        loaded = sys.modules.get(module)
        if loaded is not None and getattr(loaded, "__spec__", None) is not None:
            initializing = getattr(loaded.__spec__, "_initializing", False)
            if not initializing:
                callback(loaded)
                return
        with self._lock:
            self._callbacks.setdefault(module, []).append(callback)
            if self not in sys.meta_path:
                sys.meta_path.insert(0, self)

    def watching(self) -> Sequence[str]:
        """Modules still waited for."""
        return sorted(self._callbacks)

    def clear(self) -> None:
        """Forget every callback and leave ``sys.meta_path`` as it was."""
        with self._lock:
            self._callbacks.clear()
            self._detach()

    def _detach(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._callbacks:
            return None
        if getattr(self._local, "busy", False):
            return None
        self._local.busy = True
        try:
            spec = self._real_spec(fullname, path, target)
        finally:
            self._local.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, self._loaded)
        return spec

    def _real_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None
    ) -> importlib.machinery.ModuleSpec | None:
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                return spec  # type: ignore[no-any-return]
        return None

    def _loaded(self, module: ModuleType) -> None:
        with self._lock:
            callbacks = self._callbacks.pop(module.__name__, [])
            if not self._callbacks:
                self._detach()
        for callback in callbacks:
            callback(module)


watcher = ImportWatcher()
"""The process's one watcher, shared by known clients and ``track("dotted.name")``."""
