"""ASGI middleware (HTTP, lifespan, websockets) and a lifespan helper for FastAPI/Starlette.

::

    from fastapi import FastAPI
    from runtime_guard.integrations.asgi import GuardMiddleware, lifespan

    app = FastAPI(lifespan=lifespan(memory_limit="1GiB"))
    app.add_middleware(GuardMiddleware, exempt=("/admin",))
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from runtime_guard import _install
from runtime_guard.integrations._http import (
    PROXY_HEADERS,
    MiddlewareBase,
    current_guard,
    register_app,
)
from runtime_guard.leaks import routes as _routes

__all__ = ["GuardMiddleware", "lifespan", "websockets_enabled"]

_log = logging.getLogger("runtime_guard")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WEBSOCKETS_FEATURE = "websockets"
"""The shedding feature that, while shed, makes the middleware refuse new websockets."""

# 1013 "Try Again Later": the websocket close code for a server that is overloaded.
_TRY_AGAIN_LATER = 1013


def websockets_enabled() -> bool:
    """Whether new websockets are accepted: false only while the ``websockets`` feature is shed."""
    shedding = sys.modules.get("runtime_guard.shedding")
    if shedding is None:
        return True
    try:
        return bool(shedding.enabled(WEBSOCKETS_FEATURE))
    except Exception:
        return True


class GuardMiddleware(MiddlewareBase):
    """Wraps an ASGI app: answers the guard's routes and refuses requests while critical.

    HTTP requests are treated as in :class:`runtime_guard.integrations.wsgi.GuardMiddleware`;
    lifespan messages pass through; websockets pass through unless the ``websockets``
    feature is shed, when new ones are closed with code 1013 (try again later).
    """

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path in self._own:
                await self._answer(path, scope, send)
                return
            # The whole per-request cost: a global read, one attribute and one comparison, no
            # lock (inlined rather than calling current_guard(): a call costs as much again).
            guard = self.guard if self.guard is not None else _install._guard
            if (
                guard is not None
                and guard.pressure >= self._shed_at
                and not self.routes.is_exempt(path)
            ):
                level = guard.pressure.name.lower().encode()
                headers = [*self._refused_headers, (b"x-runtime-guard-pressure", level)]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": self._refused_body})
                return
            if _routes.TRACING:
                await self._traced(path, scope, receive, send)
                return
            await self.app(scope, receive, send)
            # Route attribution: the template the framework matched, else the raw path.
            route = _routes.asgi_route(scope)
            if route is None:
                self._count(path)
            else:
                self._counts.named(route)
            return
        elif kind == "lifespan":
            # The framework's app object (FastAPI, Starlette) is where diagnosis looks for
            # what holds a leak (``app.state``), rather than the inner app wrapped here.
            register_app(scope.get("app"), replace=True)
        elif kind == "websocket" and not websockets_enabled():
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": _TRY_AGAIN_LATER})
            return
        await self.app(scope, receive, send)

    async def _traced(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        """The request inside a leak diagnosis window: what it left allocated, per route."""
        await self.app(scope, receive, send)
        route = _routes.asgi_route(scope)
        if route is None:
            self._counts.traced_path(path)
        else:
            self._counts.traced_named(route)

    async def _answer(self, path: str, scope: Scope, send: Send) -> None:
        code, content_type, body = self.routes.answer(
            path,
            current_guard(self.guard),
            lambda: self._allows(scope),
            lambda: _accept(scope),
            scope.get("method", "GET"),
        )
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

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

    return guard_lifespan


def _accept(scope: Scope) -> str | None:
    accept = None
    for name, value in scope.get("headers", ()):
        if name == b"accept":
            accept = value.decode("latin-1")
    return accept
