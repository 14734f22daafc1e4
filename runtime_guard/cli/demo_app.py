"""The leaking web app that ``runtime-guard demo`` starts under ``runtime-guard run``.

The demo copies this file into its working directory and runs the copy as a script, so
that its frames look like an application's, not like the guard's own (which the guard's
diagnosis rightly leaves out).

It has two bugs on purpose, of the kinds seen in production post-mortems:

- every order appends its receipt to a module-level list that nothing ever trims
  (the line marked ``LEAKING LINE``);
- every user profile opens its own client (Redis, or a raw socket to a loopback server)
  and keeps it, never closed (the line marked ``CLIENT LINE``).

It also has what a well-behaved app registers with the guard: optional features that can be
shed, and a cache that may be cleared under pressure. The guard itself is not installed
here: ``runtime-guard run`` installs it at interpreter start-up, with no code change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import runtime_guard
from runtime_guard import shedding

_RECEIPTS: list[Receipt] = []
_PROFILES: dict[int, dict[str, Any]] = {}
_RENDER_CACHE: dict[int, bytes] = {}
_RENDER_CACHE_MAX = 150

StartResponse = Callable[..., Any]


class _Settings:
    receipt_bytes = 200_000
    clients = "socket"
    redis_port = 0
    upstream_port = 0


def _make_client() -> Any:
    if _Settings.clients == "redis":
        import redis

        client = redis.Redis(host="127.0.0.1", port=_Settings.redis_port)  # CLIENT LINE redis
        client.incr("demo:profiles")
        return client
    sock = socket.create_connection(("127.0.0.1", _Settings.upstream_port))  # CLIENT LINE socket
    sock.sendall(b"HELLO\n")
    return sock


class Receipt:
    """What an order leaves behind."""

    def __init__(self, order_id: int, body: bytes, lines: list[str]) -> None:
        self.order_id = order_id
        self.body = body
        self.lines = lines


def handle_order(order_id: int, size: int = 0) -> dict[str, Any]:
    """Place an order; keeps every receipt forever (the leak)."""
    size = min(max(size, 1000), 8_000_000) if size else _Settings.receipt_bytes
    _RECEIPTS.append(Receipt(order_id, b"." * size, [str(i) for i in range(200)]))  # LEAKING LINE
    body: dict[str, Any] = {"order": order_id, "receipts": len(_RECEIPTS)}
    guard = runtime_guard.get_guard()
    latest = guard.history.latest() if guard is not None else None
    if latest is not None:  # lets the demo pace its orders on fresh figures
        body["usage"] = latest.usage
    if shedding.enabled("recommendations"):
        body["recommendations"] = [(order_id * 7 + i) % 100 for i in range(5)]
    return body


def handle_profile(user_id: int) -> dict[str, Any]:
    """Load a profile; opens a client per profile and never closes it."""
    profile = _PROFILES.get(user_id)
    if profile is None:
        profile = _PROFILES[user_id] = {"client": _make_client(), "user": user_id}
    return {"user": user_id, "profiles": len(_PROFILES)}


def handle_catalog(page: int) -> dict[str, Any]:
    """Render a catalog page through a bounded cache (not a leak: it stops growing)."""
    key = page % _RENDER_CACHE_MAX
    if key not in _RENDER_CACHE:
        _RENDER_CACHE[key] = b"<li>item</li>" * 4000
    body: dict[str, Any] = {"page": page, "cached_pages": len(_RENDER_CACHE)}
    if shedding.enabled("analytics"):
        body["analytics"] = {"views": page * 3}
    return body


def admin_fix() -> dict[str, Any]:
    """What deploying the fix (or recycling the process) does: the receipts are gone."""
    dropped = len(_RECEIPTS)
    _RECEIPTS.clear()
    guard = runtime_guard.get_guard()
    relief = guard.relieve() if guard is not None else None
    return {"dropped_receipts": dropped, "relief": str(relief)}


def snapshot() -> dict[str, Any]:
    guard = runtime_guard.get_guard()
    if guard is None:
        return {"error": "guard not installed"}
    from runtime_guard.reports.timeline import snapshot as take

    data = take(guard)
    data["app"] = {
        "receipts": len(_RECEIPTS),
        "profiles": len(_PROFILES),
        "cached_pages": len(_RENDER_CACHE),
    }
    return data


_ROUTES: dict[str, Callable[[int], dict[str, Any]]] = {
    "/api/profile": handle_profile,
    "/api/catalog": handle_catalog,
}


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        number = int(query.get("id", ["0"])[0])
    except ValueError:
        number = 0
    if path == "/api/order":
        size = query.get("size", ["0"])[0]
        data = handle_order(number, int(size) if size.isdigit() else 0)
    elif path in _ROUTES:
        data = _ROUTES[path](number)
    elif path == "/admin/fix":
        data = admin_fix()
    elif path == "/_demo/snapshot":
        data = snapshot()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    body = json.dumps(data, default=str).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def _wrap(wsgi_app: Any) -> Any:
    try:
        from runtime_guard.integrations.wsgi import GuardMiddleware
    except ImportError:
        logging.getLogger("demo").warning("WSGI middleware not available: no /health route")
        return wsgi_app
    return GuardMiddleware(
        wsgi_app,
        health_path="/health",
        status_path="/_guard",
        shed_at="critical",
        retry_after=1,
        exempt=("/admin", "/_demo"),
    )


class _Server(WSGIServer):
    """Serves requests on a fixed pool of threads.

    Not a thread per request (``ThreadingMixIn``): a thread that ends frees its state
    without the GIL, and on Pythons with CPython gh-128679 that can race with
    ``tracemalloc.stop()`` when the guard ends a diagnosis window, and crash the process.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="shop")

    def process_request(self, request: Any, client_address: Any) -> None:
        self._pool.submit(self._handle, request, client_address)

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _register_with_guard() -> None:
    shedding.feature("analytics", shed_at="elevated")
    shedding.feature("recommendations", shed_at="high")
    shedding.register_cache(_RENDER_CACHE, shed_at="high", name="render_cache")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runtime_guard.cli.demo_app")
    parser.add_argument("--receipt-bytes", type=int, default=200_000)
    parser.add_argument("--clients", choices=("redis", "socket"), default="socket")
    parser.add_argument("--redis-port", type=int, default=0)
    parser.add_argument("--upstream-port", type=int, default=0)
    args = parser.parse_args(argv)
    _Settings.receipt_bytes = args.receipt_bytes
    _Settings.clients = args.clients
    _Settings.redis_port = args.redis_port
    _Settings.upstream_port = args.upstream_port
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if runtime_guard.get_guard() is None:
        sys.stderr.write("demo app: no guard installed (start it with runtime-guard run)\n")
    _register_with_guard()
    server = make_server(
        "127.0.0.1", 0, _wrap(app), server_class=_Server, handler_class=_QuietHandler
    )
    print(f"LISTENING {server.server_address[1]}", flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()  # the demo closes our stdin to stop us
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
