"""What the WSGI, ASGI and Django middleware share: routes, shedding policy, health bodies.

The probe routes mean what Kubernetes means: ``/livez`` fails only when the guard's
sampler died or is stuck (never for memory), ``/readyz`` fails while the container should
get no new requests (no live worker takes them: each is draining for a recycle, or at the
level refusals start at), ``/health`` answers for this worker as a load balancer expects.
``/readyz``, ``/health?detail=1`` and the status page answer for every live worker of the
container (:mod:`runtime_guard.container`).
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from runtime_guard import _current
from runtime_guard.config import Config, ConfigError
from runtime_guard.container import container_view
from runtime_guard.guard import Guard
from runtime_guard.integrations._extras import missing_extra
from runtime_guard.integrations._health import liveness, public_health, readiness
from runtime_guard.pressure import Pressure, parse_level

__all__ = [
    "FORBIDDEN",
    "MIDDLEWARE_OPTIONS",
    "PROXY_HEADERS",
    "STATUS_TOKEN_ENV",
    "MiddlewareBase",
    "Routes",
    "health_response",
    "is_loopback",
    "live_response",
    "metrics_response",
    "missing_extra",
    "overloaded_body",
    "public_health",
    "ready_response",
    "split_options",
    "status_page_response",
]

_log = logging.getLogger("runtime_guard")

MIDDLEWARE_OPTIONS = frozenset(
    (
        "health_path",
        "live_path",
        "ready_path",
        "shed_at",
        "retry_after",
        "exempt",
        "status_path",
        "metrics_path",
        "detail",
        "status_token",
    )
)
"""Keywords the middleware takes; every other keyword of the framework helpers is a guard option."""

_GUARD_OPTIONS = frozenset(f.name for f in dataclasses.fields(Config))

JSON = "application/json"
HTML = "text/html; charset=utf-8"

STATUS_TOKEN_ENV = "RUNTIME_GUARD_STATUS_TOKEN"
"""Variable read for ``status_token`` when the keyword is not given."""

FORBIDDEN = b"forbidden: needs a loopback client or the status token\n"
"""Body of the 403 sent for the status page to a client that may not see it."""


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keywords into ``(guard options, middleware options)``; unknown names fail loudly."""
    guard_options: dict[str, Any] = {}
    middleware: dict[str, Any] = {}
    for name, value in options.items():
        if name in MIDDLEWARE_OPTIONS:
            middleware[name] = value
        elif name in _GUARD_OPTIONS:
            guard_options[name] = value
        else:
            accepted = ", ".join(sorted(MIDDLEWARE_OPTIONS | _GUARD_OPTIONS))
            raise ConfigError(f"unknown option {name!r}; accepted options: {accepted}")
    return guard_options, middleware


@dataclass(frozen=True)
class Routes:
    """The middleware's settings: its own routes and who is refused under pressure."""

    health_path: str | None = "/health"
    """Answered with ``Guard.health()`` as JSON; ``None`` for no health route."""
    live_path: str | None = "/livez"
    """Kubernetes liveness: 503 only when the guard's sampler died or is stuck."""
    ready_path: str | None = "/readyz"
    """Kubernetes readiness: 503 while no live worker of the container takes requests."""
    shed_at: Pressure = Pressure.CRITICAL
    """From this level on, requests outside :attr:`exempt` get 503."""
    retry_after: int = 10
    """Seconds sent in ``Retry-After`` with each 503."""
    exempt: tuple[str, ...] = ()
    """Path prefixes never refused (each matches itself and everything below it)."""
    status_path: str | None = None
    """Live status page (HTML); off unless set."""
    metrics_path: str | None = None
    """Prometheus metrics; off unless set (needs the ``prometheus`` extra)."""
    detail: bool = False
    """Put source paths, leak reports and creation sites in the health body too."""
    status_token: bytes | None = field(default=None, repr=False)
    """Token the status page and detailed health need; ``None`` means loopback clients only."""

    @classmethod
    def make(
        cls,
        *,
        health_path: str | None = "/health",
        live_path: str | None = "/livez",
        ready_path: str | None = "/readyz",
        shed_at: str | int | Pressure = "critical",
        retry_after: int = 10,
        exempt: Iterable[str] = (),
        status_path: str | None = None,
        metrics_path: str | None = None,
        detail: bool = False,
        status_token: str | None = None,
    ) -> Routes:
        """Validate the middleware keywords; a bad one raises ``ConfigError``."""
        level = parse_level(shed_at, "shed_at")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ConfigError(f"retry_after={retry_after!r} is not accepted: expected seconds >= 0")
        if isinstance(exempt, str):
            exempt = (exempt,)
        paths = {"health_path": health_path, "status_path": status_path}
        paths.update(metrics_path=metrics_path, live_path=live_path, ready_path=ready_path)
        for name, path in paths.items():
            if path is not None and not (isinstance(path, str) and path.startswith("/")):
                raise ConfigError(f"{name}={path!r} is not accepted: expected a path like '/x'")
        prefixes = tuple(p.rstrip("/") or "/" for p in exempt)
        for prefix in prefixes:
            if not prefix.startswith("/"):
                raise ConfigError(f"exempt={prefix!r} is not accepted: expected paths like '/x'")
        if status_token is None:
            status_token = os.environ.get(STATUS_TOKEN_ENV, "").strip() or None
        elif not isinstance(status_token, str) or not status_token.strip():
            raise ConfigError("status_token=... is not accepted: expected a non-empty string")
        token = status_token.strip().encode("utf-8", "replace") if status_token else None
        return cls(
            health_path,
            live_path,
            ready_path,
            level,
            retry_after,
            prefixes,
            status_path,
            metrics_path,
            bool(detail),
            token,
        )

    @property
    def own_paths(self) -> frozenset[str]:
        """Paths the middleware answers itself."""
        paths = (self.health_path, self.live_path, self.ready_path)
        return frozenset(p for p in (*paths, self.status_path, self.metrics_path) if p)

    def allows(
        self, client: str | None, authorization: str | None, query: str, proxied: bool
    ) -> bool:
        """Whether a request may see the status page or detailed health.

        With a token configured, only a request carrying it (``Authorization: Bearer`` or
        ``?token=``) may; without one, only a loopback client that no proxy forwarded (a
        proxy on the same host would make every client look local).
        """
        if self.status_token is None:
            return not proxied and is_loopback(client)
        given = _bearer(authorization)
        if given is None and "token=" in query:
            given = next(iter(parse_qs(query).get("token", ())), None)
        # compare_digest, so the time taken says nothing about how much of a guess matched.
        return given is not None and hmac.compare_digest(
            given.encode("utf-8", "replace"), self.status_token
        )

    def answer(
        self,
        path: str,
        guard: Guard | None,
        allows: Callable[[], bool],
        accept: Callable[[], str | None],
        query: str = "",
    ) -> tuple[int, str, bytes]:
        """``(code, content type, body)`` for one of :attr:`own_paths`.

        ``allows`` and ``accept`` read the request (its access, its ``Accept`` header) only
        for the routes that need them; ``query`` is its query string (``detail=1`` asks
        the health route for the whole health and the container view).
        """
        if path == self.live_path:
            code, body = live_response(guard)
            return code, JSON, body
        if path == self.health_path:
            asked = "detail=" in query and _flag(parse_qs(query).get("detail"))
            detail = (self.detail or asked) and allows()
            code, body = health_response(guard, detail, container=asked and detail)
            return code, JSON, body
        if path == self.ready_path:
            code, body = ready_response(guard, self.shed_at)
            return code, JSON, body
        if path == self.metrics_path:
            return metrics_response(accept())
        if allows():
            return status_page_response(guard)
        return 403, "text/plain", FORBIDDEN

    def is_exempt(self, path: str) -> bool:
        """Whether ``path`` is never refused (own routes, and anything under :attr:`exempt`)."""
        if path in self.own_paths:
            return True
        return any(prefix in ("/", path) or path.startswith(prefix + "/") for prefix in self.exempt)


class MiddlewareBase:
    """What the WSGI and ASGI middleware share: their options and the refusal they send.

    ``guard`` defaults to the process-wide guard at request time, so the middleware can be
    built before :func:`runtime_guard.install` (for instance in a gunicorn master that
    installs the guard in each worker after the fork); with no guard installed it only
    answers its routes.
    """

    def __init__(
        self,
        app: Any,
        *,
        guard: Guard | None = None,
        health_path: str | None = "/health",
        live_path: str | None = "/livez",
        ready_path: str | None = "/readyz",
        shed_at: str | int | Pressure = "critical",
        retry_after: int = 10,
        exempt: Iterable[str] = (),
        status_path: str | None = None,
        metrics_path: str | None = None,
        detail: bool = False,
        status_token: str | None = None,
    ) -> None:
        self.app = app
        """The wrapped application."""
        self.guard = guard
        """The guard acted on; ``None`` means the process-wide one."""
        self.routes = Routes.make(
            health_path=health_path,
            live_path=live_path,
            ready_path=ready_path,
            shed_at=shed_at,
            retry_after=retry_after,
            exempt=exempt,
            status_path=status_path,
            metrics_path=metrics_path,
            detail=detail,
            status_token=status_token,
        )
        """The validated settings."""
        self._own = self.routes.own_paths
        self._shed_at = self.routes.shed_at
        self._refused_body = overloaded_body(self.routes.retry_after)
        self._refused_headers = [
            ("Content-Type", JSON),
            ("Content-Length", str(len(self._refused_body))),
            ("Retry-After", str(self.routes.retry_after)),
            ("Cache-Control", "no-store"),
        ]
        if metrics_path is not None:
            from runtime_guard.integrations.prometheus import install_metrics

            install_metrics()


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` (a client IP as servers report it) is this host's loopback."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
"""Request headers (lower case) that show a proxy relayed the request for another client."""


def current_guard(guard: Guard | None) -> Guard | None:
    """The guard a middleware acts on: its own, else the process-wide one (a global read)."""
    return guard if guard is not None else _current.guard


def _flag(values: list[str] | None) -> bool:
    if not values:
        return False
    return values[-1].strip().lower() in ("1", "true", "yes", "on")


def health_response(
    guard: Guard | None, detail: bool, *, container: bool = False
) -> tuple[int, bytes]:
    """``(status code, JSON body)`` for the health route: 503 only when critical.

    ``detail`` gives the whole ``Guard.health()`` instead of its figures; ``container``
    adds the view of every live worker of the container under ``"container"``.
    """
    if guard is None:
        return 200, b'{"status": "ok", "guard": "not installed"}'
    try:
        data = guard.health()
    except Exception:
        _log.exception("runtime_guard: health() failed; answering 500")
        return 500, b'{"status": "error"}'
    body = data if detail else public_health(data)
    if container:
        try:
            body["container"] = container_view(guard).to_dict()
        except Exception:
            _log.exception("runtime_guard: could not read the container view")
    code = 503 if data.get("status") == "critical" else 200
    return code, json.dumps(body, default=str).encode()


def live_response(guard: Guard | None) -> tuple[int, bytes]:
    """``(status code, JSON body)`` for ``/livez`` (see :func:`liveness`)."""
    try:
        code, body = liveness(guard)
    except Exception:
        # The guard's own failure is no reason to restart the container.
        _log.exception("runtime_guard: liveness check failed; answering 200")
        code, body = 200, {"status": "ok", "error": "liveness check failed"}
    return code, json.dumps(body).encode()


def ready_response(guard: Guard | None, shed_at: Pressure) -> tuple[int, bytes]:
    """``(status code, JSON body)`` for ``/readyz`` (see :func:`readiness`)."""
    workers = None
    if guard is not None:
        try:
            workers = container_view(guard).workers
        except Exception:
            _log.exception("runtime_guard: could not read the container view")
    try:
        code, body = readiness(guard, shed_at, workers)
    except Exception:
        _log.exception("runtime_guard: readiness check failed; answering 200")
        code, body = 200, {"ready": True, "status": "ready", "error": "readiness check failed"}
    return code, json.dumps(body, default=str).encode()


def overloaded_body(retry_after: int) -> bytes:
    """JSON body of the 503 sent to refused requests."""
    return json.dumps({"error": "overloaded", "retry_after": retry_after}).encode()


def status_page_response(guard: Guard | None) -> tuple[int, str, bytes]:
    """``(code, content type, body)`` of the live status page, when its module exists."""
    try:
        from runtime_guard.reports.statuspage import render_status_page
    except ImportError:
        return 404, "text/plain", b"status page not available in this version\n"
    if guard is None:
        return 503, "text/plain", b"runtime_guard is not installed\n"
    try:
        return 200, HTML, str(render_status_page(guard)).encode()
    except Exception:
        _log.exception("runtime_guard: status page failed")
        return 500, "text/plain", b"status page failed\n"


def metrics_response(accept: str | None) -> tuple[int, str, bytes]:
    """``(code, content type, body)`` of the Prometheus metrics route."""
    try:
        from runtime_guard.integrations import prometheus
    except ImportError as exc:
        return 404, "text/plain", f"{exc}\n".encode()
    content_type, body = prometheus.render(accept)
    return 200, content_type, body
