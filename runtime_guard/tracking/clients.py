"""Known client classes and how each is released.

A client is tracked from the moment its module finishes importing, whether that happened
before the guard was installed or after (see :mod:`runtime_guard.tracking.imports`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime_guard import _frames

# The watcher and resolve() lived here in 0.1; code written then imports them from here.
from runtime_guard.tracking.imports import ImportWatcher, resolve, watcher

__all__ = ["CLIENTS", "ClientSpec", "Companion", "ImportWatcher", "resolve", "watcher"]


def _owns_redis_pool(client: Any) -> bool:
    # A client built on a pool it was given (``connection_pool=``) borrows the pool and
    # holds nothing of its own: not closing it is the documented per-call idiom.
    return bool(getattr(client, "auto_close_connection_pool", True))


# What servers do with sockets: accept connections, listen (asyncio's create_server,
# uvicorn's and gunicorn's binding) and wake their loops (asyncio's self-pipe). A socket made
# there is the server's own, never a client the application forgot to close.
_SERVER_CALLS = frozenset(
    {"accept", "create_server", "_make_self_pipe", "bind_socket", "create_sockets"}
)
_SOCKET_FRAMES = 8
_LIBRARY = _frames.LIBRARY


def _owns_socket(sock: Any) -> bool:
    """False for a socket a server made (accepted, listening, a loop's wake-up pair)."""
    frame: Any = sys._getframe(1)
    for _ in range(_SOCKET_FRAMES):
        if frame is None:
            break
        name = frame.f_code.co_name
        if name in _SERVER_CALLS:
            return False
        if name == "socketpair":
            # A pair an installed library makes for itself (a loop's or a pool's wake-up
            # pair: anyio, kombu, billiard) is its own; one made for the application's code,
            # directly or through a thread pool, is the application's to close.
            caller = frame.f_back
            if caller is not None and _frames.kind(caller.f_code.co_filename) is _LIBRARY:
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
