"""ASGI middleware (HTTP, lifespan, websockets) and a lifespan helper for FastAPI/Starlette.

::

    from fastapi import FastAPI
    from runtime_guard.integrations.asgi import GuardMiddleware, lifespan

    app = FastAPI(lifespan=lifespan(memory_limit="1GiB"))
    app.add_middleware(GuardMiddleware, exempt=("/admin",))
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from runtime_guard import _current
from runtime_guard.integrations._http import (
    PROXY_HEADERS,
    MiddlewareBase,
    current_guard,
)
from runtime_guard.pressure import Pressure

__all__ = ["GuardMiddleware", "lifespan", "websockets_enabled"]

_log = logging.getLogger("runtime_guard")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = tuple[tuple[bytes, bytes], ...]

WEBSOCKETS_FEATURE = "websockets"
"""The shedding feature that, while shed, makes the middleware refuse new websockets."""

# 1013 "Try Again Later": the websocket close code for a server that is overloaded.
_TRY_AGAIN_LATER = 1013

# A header name is an HTTP token (here already lower-case); a value may not carry the bytes
# that would end the header, or the whole head, early.
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_HEADER_VALUE = re.compile(rb"[^\r\n\0]*")


def websockets_enabled() -> bool:
    """Whether new websockets are accepted: false only while the ``websockets`` feature is shed."""
    shedding = sys.modules.get("runtime_guard.shedding")
    if shedding is None:
        return True
    try:
        return bool(shedding.enabled(WEBSOCKETS_FEATURE))
    except Exception:
        return True


def _encode_headers(pairs: Iterable[tuple[str, str]]) -> Headers:
    """Header pairs as ASGI wants them in ``http.response.start``: both ``bytes``, names lower-case.

    Every header the middleware sends is encoded here. Servers differ in what they let
    through: uvicorn's h11 protocol takes ``str`` headers, its httptools protocol raises
    on them and drops the connection, hypercorn answers 500 instead.
    """
    encoded = []
    for name, value in pairs:
        raw_name, raw_value = name.lower().encode("latin-1"), value.encode("latin-1")
        if not _HEADER_NAME.fullmatch(raw_name) or not _HEADER_VALUE.fullmatch(raw_value):
            raise ValueError(f"not a valid response header: {name!r}: {value!r}")
        encoded.append((raw_name, raw_value))
    return tuple(encoded)


def _response_start(status: int, headers: Headers) -> Message:
    """A fresh ``http.response.start`` message (servers and outer middleware may edit it)."""
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


def _response_body(body: bytes) -> Message:
    """The one ``http.response.body`` message of a response whose body is all of ``body``."""
    return {"type": "http.response.body", "body": body, "more_body": False}


class GuardMiddleware(MiddlewareBase):
    """Wraps an ASGI app: answers the guard's routes and refuses requests while critical.

    HTTP requests are treated as in :class:`runtime_guard.integrations.wsgi.GuardMiddleware`;
    lifespan messages pass through; websockets pass through unless the ``websockets``
    feature is shed, when new ones are accepted and closed at once with code 1013 (try again
    later). Every message it sends itself is shaped as the ASGI spec says (bytes headers with
    lower-case names, one body message): servers differ in what else they let through.
    """

    app: ASGIApp

    @functools.cached_property
    def _refusals(self) -> dict[Pressure, Headers]:
        """The 503's headers for each level it can be sent at, encoded on the first refusal:
        after that, refusing costs no more than the pressure check in front of it."""
        return {
            level: _encode_headers(
                [*self._refused_headers, ("X-Runtime-Guard-Pressure", level.name.lower())]
            )
            for level in Pressure
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # The whole per-request cost: a dict lookup, a global read, one attribute and one
            # comparison, no lock (inlined rather than calling current_guard(): a call costs
            # as much again).
            path: str = scope["path"]
            if scope.get("root_path"):
                path = _route_path(path, scope["root_path"])
            if path in self._own:
                await self._answer(path, scope, send)
                return
            guard = self.guard if self.guard is not None else _current.guard
            if (
                guard is not None
                and guard.pressure >= self._shed_at
                and not self.routes.is_exempt(path)
            ):
                await send(_response_start(503, self._refusals[guard.pressure]))
                await send(_response_body(self._refused_body))
                return
        elif kind == "websocket" and not websockets_enabled():
            await self._refuse_websocket(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _answer(self, path: str, scope: Scope, send: Send) -> None:
        code, content_type, body = self.routes.answer(
            path,
            current_guard(self.guard),
            lambda: self._allows(scope),
            lambda: _accept(scope),
            scope.get("query_string", b"").decode("latin-1"),
        )
        headers = _encode_headers(
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ]
        )
        await send(_response_start(code, headers))
        await send(_response_body(body))

    @staticmethod
    async def _refuse_websocket(scope: Scope, receive: Receive, send: Send) -> None:
        """Accept, then close with 1013 at once, so the client learns to try again later.

        A close sent before the accept would make the server refuse the handshake with a
        403, which tells the client it is forbidden, not that the server is overloaded; a
        browser sees neither (its ``CloseEvent`` says 1006). Accepting first puts 1013 in
        the close frame every client reads. The first subprotocol the client offers is
        accepted with it: a browser fails a handshake that answers none of those it asked for.
        """
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        subprotocols = scope.get("subprotocols") or ()
        accept: Message = {"type": "websocket.accept"}
        if subprotocols:
            accept["subprotocol"] = subprotocols[0]
        await send(accept)
        await send({"type": "websocket.close", "code": _TRY_AGAIN_LATER, "reason": "overloaded"})

    def _allows(self, scope: Scope) -> bool:
        authorization = None
        proxied = False
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name.decode("latin-1") in PROXY_HEADERS:
                proxied = True
        client = scope.get("client")
        query: bytes = scope.get("query_string", b"")
        return self.routes.allows(
            client[0] if client else None, authorization, query.decode("latin-1"), proxied
        )


def lifespan(
    recycle: bool = True, **options: Any
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan for ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)``.

    Startup runs in each worker process, so each gets its own guard (``options`` as for
    :func:`runtime_guard.install`); under uvicorn, ``recycle`` also makes a
    ``restart_requested`` signal shut the worker down through uvicorn's own graceful path
    (see :mod:`runtime_guard.integrations.uvicorn`). Shutdown uninstalls the guard.
    """
    from runtime_guard.config import Config

    Config.from_options(options)  # fail at import time, not in the first worker

    @contextlib.asynccontextmanager
    async def guard_lifespan(app: Any) -> AsyncIterator[None]:
        import runtime_guard

        guard = runtime_guard.install(**options)
        if recycle and "uvicorn" in sys.modules:
            from runtime_guard.integrations.uvicorn import enable_recycling

            enable_recycling(guard)
        try:
            yield
        finally:
            runtime_guard.uninstall()
            if "uvicorn" in sys.modules:
                from runtime_guard.integrations.uvicorn import worker_stopping

                worker_stopping()

    return guard_lifespan


def _route_path(path: str, root_path: str) -> str:
    """``path`` as seen from where the app is mounted: without ``root_path`` in front of it.

    The scope's path is the full path (uvicorn puts ``--root-path`` back in front of what
    the proxy forwarded; hypercorn passes on what arrived, root path included), while the
    middleware's routes and exempt prefixes are the app's own paths.
    """
    if path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] in ("", "/"):
        return path[len(root_path) :] or "/"
    return path


def _accept(scope: Scope) -> str | None:
    accept = None
    for name, value in scope.get("headers", ()):
        if name == b"accept":
            accept = value.decode("latin-1")
    return accept
