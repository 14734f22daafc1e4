"""ASGI middleware and lifespan helper: HTTP shedding, websockets, lifespan on a real uvicorn."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import runtime_guard
from runtime_guard import shedding
from runtime_guard.integrations.asgi import GuardMiddleware, _encode_headers, lifespan
from runtime_guard.testing import FakeProbe, make_guard


async def hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello " + scope["path"].encode()})


@pytest.fixture
def fake() -> Iterator[tuple[FakeProbe, runtime_guard.Guard]]:
    probe = FakeProbe()
    guard = make_guard(probe)
    yield probe, guard
    guard.stop()


def client(app: Any, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 123))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.asyncio
async def test_http_refused_while_critical_except_exempt(fake: Any) -> None:
    """While critical, non-exempt requests get 503 + Retry-After; exempt and health answer."""
    probe, guard = fake
    app = GuardMiddleware(hello, guard=guard, retry_after=3, exempt=("/admin",))
    async with client(app) as http:
        probe.set_fraction(0.2)
        guard.sample()
        assert (await http.get("/work")).text == "hello /work"
        probe.set_fraction(0.97)
        guard.sample()
        refused = await http.get("/work")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "3"
        assert refused.json() == {"error": "overloaded", "retry_after": 3}
        assert (await http.get("/admin/x")).status_code == 200
        health = await http.get("/health")
        assert (health.status_code, health.json()["status"]) == (503, "critical")
        assert "sources" not in health.json()


@pytest.mark.asyncio
async def test_status_page_and_detail_need_loopback_or_the_token(
    fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remote clients get 403 for the page and figures-only health unless they bring the token."""
    monkeypatch.delenv("RUNTIME_GUARD_STATUS_TOKEN", raising=False)
    probe, guard = fake
    probe.set_fraction(0.1)
    guard.sample()
    app = GuardMiddleware(hello, guard=guard, status_path="/status", detail=True)
    async with client(app, "10.9.8.7") as remote:
        assert (await remote.get("/status")).status_code == 403
        health = await remote.get("/health")
        assert health.status_code == 200
        assert "sources" not in health.json()
    async with client(app) as local:
        assert (await local.get("/status")).status_code == 200
        assert (await local.get("/health")).json()["sources"] == probe.sources
        proxied = await local.get("/status", headers={"Forwarded": "for=203.0.113.9"})
        assert proxied.status_code == 403
    app = GuardMiddleware(hello, guard=guard, status_path="/status", status_token="k3y")
    async with client(app, "10.9.8.7") as remote:
        assert (await remote.get("/status")).status_code == 403
        bearer = {"Authorization": "Bearer k3y"}
        assert (await remote.get("/status", headers=bearer)).status_code == 200
        assert (await remote.get("/status?token=k3y")).status_code == 200
        assert (await remote.get("/status?token=k3z")).status_code == 403


async def _websocket(app: Any, subprotocols: list[str] | None = None) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        _assert_websocket_message(message)
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "subprotocols": subprotocols or []}
    await app(scope, receive, send)
    return sent


REFUSED = {"type": "websocket.close", "code": 1013, "reason": "overloaded"}


@pytest.mark.asyncio
async def test_websockets_pass_until_the_feature_is_shed(fake: Any) -> None:
    """New websockets are accepted normally, and accepted then closed with 1013 while shed."""
    probe, guard = fake
    shedding.feature("websockets", shed_at="high")
    app = GuardMiddleware(hello, guard=guard)
    probe.set_fraction(0.2)
    guard.sample()
    assert await _websocket(app) == [{"type": "websocket.accept"}]
    probe.set_fraction(0.9)
    guard.sample()
    assert not shedding.enabled("websockets")
    assert await _websocket(app) == [{"type": "websocket.accept"}, REFUSED]
    chosen = {"type": "websocket.accept", "subprotocol": "chat"}
    assert await _websocket(app, ["chat", "v2"]) == [chosen, REFUSED]
    probe.set_fraction(0.2)
    guard.sample()
    assert await _websocket(app) == [{"type": "websocket.accept"}]


def _assert_websocket_message(message: dict[str, Any]) -> None:
    """One message an ASGI app may send on a websocket, with each key of the type the spec says."""
    if message["type"] == "websocket.accept":
        assert set(message) <= {"type", "subprotocol", "headers"}
        assert isinstance(message.get("subprotocol", ""), str)
    else:
        assert message["type"] == "websocket.close"
        assert set(message) <= {"type", "code", "reason"}
        assert type(message["code"]) is int and isinstance(message["reason"], str)


def _assert_http_response(messages: list[dict[str, Any]]) -> tuple[int, dict[bytes, bytes], bytes]:
    """A complete ASGI HTTP response as the spec has it: status an int, header names
    lower-case ``bytes`` and values ``bytes``, body ``bytes`` as long as any Content-Length says,
    ``more_body`` false on the last body message only. Returns status, headers, body."""
    start, *bodies = messages
    assert start["type"] == "http.response.start"
    assert set(start) <= {"type", "status", "headers", "trailers"}
    assert type(start["status"]) is int and 100 <= start["status"] <= 599
    for pair in start["headers"]:
        name, value = pair
        assert type(name) is bytes and type(value) is bytes, pair
        assert name == name.lower(), pair
    assert bodies, "no http.response.body"
    for index, message in enumerate(bodies):
        assert message["type"] == "http.response.body"
        assert set(message) <= {"type", "body", "more_body"}
        assert type(message["body"]) is bytes
        assert message.get("more_body", False) is (index < len(bodies) - 1)
    headers = dict(start["headers"])
    body = b"".join(m["body"] for m in bodies)
    if b"content-length" in headers:
        assert int(headers[b"content-length"]) == len(body)
    return start["status"], headers, body


async def _http(
    app: Any, path: str, headers: tuple[tuple[bytes, bytes], ...] = (), root_path: str = ""
) -> tuple[int, dict[bytes, bytes], bytes]:
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": root_path,
        "headers": list(headers),
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return _assert_http_response(sent)


PROXIED = ((b"x-forwarded-for", b"203.0.113.9"),)
OPENMETRICS = ((b"accept", b"application/openmetrics-text; version=1.0.0"),)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fraction", "path", "headers", "expected"),
    [
        (0.97, "/work", (), (503, b"application/json")),
        (0.88, "/work", (), (503, b"application/json")),
        (0.2, "/health", (), (200, b"application/json")),
        (0.2, "/health", PROXIED, (200, b"application/json")),
        (0.97, "/health", (), (503, b"application/json")),
        (0.97, "/health", PROXIED, (503, b"application/json")),
        (0.97, "/metrics", (), (200, b"text/plain; version=0.0.4; charset=utf-8")),
        (0.2, "/metrics", OPENMETRICS, (200, b"application/openmetrics-text")),
        (0.97, "/status", (), (200, b"text/html; charset=utf-8")),
        (0.97, "/status", PROXIED, (403, b"text/plain")),
        (0.97, "/status?token=wrong", PROXIED, (403, b"text/plain")),
    ],
)
async def test_every_response_follows_the_asgi_spec(
    fake: Any,
    fraction: float,
    path: str,
    headers: tuple[tuple[bytes, bytes], ...],
    expected: tuple[int, bytes],
) -> None:
    """Each route, and the 503 at each level it is sent at, is a well-formed ASGI response."""
    probe, guard = fake
    app = GuardMiddleware(
        hello,
        guard=guard,
        shed_at="high",
        retry_after=4,
        status_path="/status",
        metrics_path="/metrics",
        detail=True,
    )
    probe.set_fraction(fraction)
    guard.sample()
    status, sent_headers, body = await _http(app, path, headers)
    assert (status, sent_headers[b"content-type"].partition(b";")[0]) == (
        expected[0],
        expected[1].partition(b";")[0],
    )
    assert sent_headers[b"cache-control"] == b"no-store"
    assert b"content-length" in sent_headers
    if path == "/work":
        assert sent_headers[b"retry-after"] == b"4"
        assert sent_headers[b"x-runtime-guard-pressure"] == guard.pressure.name.lower().encode()
        assert json.loads(body) == {"error": "overloaded", "retry_after": 4}
    if path == "/health":
        assert ("sources" in json.loads(body)) is (headers != PROXIED)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "answered_by"),
    [
        ("/api/health", "guard"),
        ("/api", "refusal"),
        ("/api/admin/x", "app"),
        ("/api/work", "refusal"),
        ("/apiary/health", "refusal"),
    ],
)
async def test_routes_and_exemptions_are_the_apps_own_paths_under_a_root_path(
    fake: Any, path: str, answered_by: str
) -> None:
    """With the app mounted at a root path, routes and exempt prefixes match below it only."""
    probe, guard = fake
    app = GuardMiddleware(hello, guard=guard, exempt=("/admin",))
    probe.set_fraction(0.97)
    guard.sample()
    status, _, body = await _http(app, path, root_path="/api")
    if body.startswith(b"hello"):
        seen = "app"
    elif json.loads(body).get("error") == "overloaded":
        seen = "refusal"
    else:
        seen = "guard"
    assert (seen, status) == (answered_by, 200 if seen == "app" else 503)


def test_a_header_that_would_break_the_response_is_refused_where_it_is_built() -> None:
    """Header names come out lower-case bytes; a line break or a name that is no token raises."""
    assert _encode_headers([("Content-Type", "text/plain")]) == ((b"content-type", b"text/plain"),)
    for bad in [("X-A", "1\r\nSet-Cookie: x"), ("X A", "1"), ("", "1"), ("X-A:", "1")]:
        with pytest.raises(ValueError, match="not a valid response header"):
            _encode_headers([bad])
    with pytest.raises(UnicodeEncodeError):
        _encode_headers([("X-A", "\u2603")])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_lifespan_installs_in_the_server_and_uninstalls_on_shutdown() -> None:
    """On a real uvicorn, startup installs the guard, /health answers, shutdown uninstalls it."""

    async def status(request: Request) -> PlainTextResponse:
        guard = runtime_guard.get_guard()
        return PlainTextResponse("installed" if guard is not None else "none")

    app = Starlette(routes=[Route("/guard", status)], lifespan=lifespan(interval=0.2))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(GuardMiddleware(app), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        assert httpx.get(f"http://127.0.0.1:{port}/guard").text == "installed"
        health = httpx.get(f"http://127.0.0.1:{port}/health")
        assert health.status_code == 200
        assert json.loads(health.content)["pressure"] in ("ok", "elevated", "high")
    finally:
        server.should_exit = True
        thread.join(20)
    assert runtime_guard.get_guard() is None
