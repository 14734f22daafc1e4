"""WSGI middleware: the probe routes, and 503 with ``Retry-After`` while memory is critical.

It answers ``/livez`` (the guard can run), ``/readyz`` (the container takes requests) and
``/health`` (this worker) itself::

    from runtime_guard.integrations.wsgi import GuardMiddleware

    app = GuardMiddleware(app, health_path="/health", shed_at="critical", exempt=("/admin",))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from runtime_guard import _current
from runtime_guard.integrations._http import (
    PROXY_HEADERS,
    MiddlewareBase,
    current_guard,
)

__all__ = ["GuardMiddleware"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_REASONS = {200: "200 OK", 404: "404 Not Found", 500: "500 Internal Server Error"}
_REASONS[403] = "403 Forbidden"
_PROXY_KEYS = tuple("HTTP_" + name.upper().replace("-", "_") for name in PROXY_HEADERS)
_REASONS[503] = "503 Service Unavailable"


class GuardMiddleware(MiddlewareBase):
    """Wraps a WSGI app: answers the guard's routes and refuses requests while critical."""

    app: WSGIApp

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if path in self._own:
            return self._answer(path, environ, start_response)
        # The whole per-request cost: a global read, one attribute and one comparison, no
        # lock (inlined rather than calling current_guard(): a call costs as much again).
        guard = self.guard if self.guard is not None else _current.guard
        if (
            guard is not None
            and guard.pressure >= self._shed_at
            and not self.routes.is_exempt(path)
        ):
            headers = [*self._refused_headers]
            headers.append(("X-Runtime-Guard-Pressure", guard.pressure.name.lower()))
            start_response(_REASONS[503], headers)
            return [self._refused_body]
        return self.app(environ, start_response)

    def _answer(
        self, path: str, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        code, content_type, body = self.routes.answer(
            path,
            current_guard(self.guard),
            lambda: self._allows(environ),
            lambda: environ.get("HTTP_ACCEPT"),
            environ.get("QUERY_STRING", ""),
        )
        start_response(
            _REASONS.get(code, f"{code} Error"),
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]

    def _allows(self, environ: dict[str, Any]) -> bool:
        return self.routes.allows(
            environ.get("REMOTE_ADDR"),
            environ.get("HTTP_AUTHORIZATION"),
            environ.get("QUERY_STRING", ""),
            any(key in environ for key in _PROXY_KEYS),
        )
