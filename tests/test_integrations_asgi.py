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
from runtime_guard.integrations.asgi import GuardMiddleware, lifespan
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


async def _websocket(app: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    return sent


@pytest.mark.asyncio
async def test_websockets_pass_until_the_feature_is_shed(fake: Any) -> None:
    """New websockets are accepted normally and closed with 1013 while ``websockets`` is shed."""
    probe, guard = fake
    shedding.feature("websockets", shed_at="high")
    app = GuardMiddleware(hello, guard=guard)
    probe.set_fraction(0.2)
    guard.sample()
    assert await _websocket(app) == [{"type": "websocket.accept"}]
    probe.set_fraction(0.9)
    guard.sample()
    assert not shedding.enabled("websockets")
    assert await _websocket(app) == [{"type": "websocket.close", "code": 1013}]
    probe.set_fraction(0.2)
    guard.sample()
    assert await _websocket(app) == [{"type": "websocket.accept"}]


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
