"""Django: a middleware configured from the ``RUNTIME_GUARD`` settings dict.

::

    MIDDLEWARE = ["runtime_guard.integrations.django.GuardMiddleware", ...]  # first
    RUNTIME_GUARD = {"memory_limit": "1GiB", "exempt": ["/admin"], "metrics_path": "/metrics"}

The dict holds :func:`runtime_guard.install` options and the middleware's (``health_path``,
``live_path``, ``ready_path``, ``shed_at``, ``retry_after``, ``exempt``, ``status_path``,
``metrics_path``, ``detail``, ``status_token``),
plus ``"install": False`` to leave installing to someone else (a gunicorn hook). The
middleware works under WSGI and ASGI alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import runtime_guard
from runtime_guard import _current
from runtime_guard.integrations._http import (
    JSON,
    PROXY_HEADERS,
    Routes,
    current_guard,
    missing_extra,
    overloaded_body,
    split_options,
)

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.conf import settings
    from django.http import HttpRequest, HttpResponse
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("django", "django", "django") from exc

__all__ = ["GuardMiddleware"]

Handler = Callable[[HttpRequest], Any]


class GuardMiddleware:
    """Answers the guard's routes and refuses requests with 503 while memory is critical."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response
        options = dict(getattr(settings, "RUNTIME_GUARD", None) or {})
        install = bool(options.pop("install", True))
        guard_options, middleware_options = split_options(options)
        self.guard = runtime_guard.install(**guard_options) if install else None
        """The guard installed from the settings (``None`` with ``"install": False``)."""
        self.routes = Routes.make(**middleware_options)
        """The validated middleware settings."""
        self._own = self.routes.own_paths
        self._shed_at = self.routes.shed_at
        if self.routes.metrics_path is not None:
            from runtime_guard.integrations.prometheus import install_metrics

            install_metrics()
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self._async:
            return self._acall(request)
        early = self._early(request)
        return early if early is not None else self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        early = self._early(request)
        if early is not None:
            return early
        return await self.get_response(request)

    def _early(self, request: HttpRequest) -> HttpResponse | None:
        path = request.path_info
        if path in self._own:
            return self._answer(path, request)
        # The whole per-request cost: a global read, one attribute and one comparison, no
        # lock (inlined rather than calling current_guard(): a call costs as much again).
        guard = self.guard if self.guard is not None else _current.guard
        if (
            guard is not None
            and guard.pressure >= self._shed_at
            and not self.routes.is_exempt(path)
        ):
            response = HttpResponse(
                overloaded_body(self.routes.retry_after), status=503, content_type=JSON
            )
            response["Retry-After"] = str(self.routes.retry_after)
            response["X-Runtime-Guard-Pressure"] = guard.pressure.name.lower()
            response["Cache-Control"] = "no-store"
            return response
        return None

    def _answer(self, path: str, request: HttpRequest) -> HttpResponse:
        code, content_type, body = self.routes.answer(
            path,
            current_guard(self.guard),
            lambda: self._allows(request),
            lambda: request.headers.get("Accept"),
            request.META.get("QUERY_STRING", ""),
        )
        response = HttpResponse(body, status=code, content_type=content_type)
        response["Cache-Control"] = "no-store"
        return response

    def _allows(self, request: HttpRequest) -> bool:
        return self.routes.allows(
            request.META.get("REMOTE_ADDR"),
            request.headers.get("Authorization"),
            request.META.get("QUERY_STRING", ""),
            any(name in request.headers for name in PROXY_HEADERS),
        )
