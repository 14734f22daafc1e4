"""Django: middleware configured from settings.RUNTIME_GUARD, sync and async; the example."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import django
import httpx
import pytest
import servers
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path

import runtime_guard
from runtime_guard.probes import RssReader

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def work(request: HttpRequest) -> HttpResponse:
    return HttpResponse("done")


def ping(request: HttpRequest) -> HttpResponse:
    return HttpResponse("pong")


urlpatterns = [path("work", work), path("admin/ping", ping)]

if not settings.configured:
    settings.configure(
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["runtime_guard.integrations.django.GuardMiddleware"],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )
    django.setup()


def test_settings_dict_installs_and_health_answers() -> None:
    """RUNTIME_GUARD options install the guard; /health answers with figures."""
    rss = RssReader().read()
    with override_settings(RUNTIME_GUARD={"memory_limit": rss * 10, "interval": 60}):
        client = Client()
        assert client.get("/work").content == b"done"
        guard = runtime_guard.get_guard()
        assert guard is not None and guard.limit == rss * 10
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["limit_bytes"] == rss * 10
        assert "sources" not in health.json()


def test_critical_refuses_non_exempt_requests() -> None:
    """While critical, requests get 503 + Retry-After except the exempt ones."""
    rss = RssReader().read()
    options = {"memory_limit": rss // 2, "interval": 60, "exempt": ["/admin"], "retry_after": 4}
    with override_settings(RUNTIME_GUARD=options):
        client = Client()
        client.get("/admin/ping")  # loads the middleware, which installs the guard
        runtime_guard.get_guard().sample()  # type: ignore[union-attr]
        refused = client.get("/work")
        assert (refused.status_code, refused["Retry-After"]) == (503, "4")
        assert client.get("/admin/ping").content == b"pong"
        assert client.get("/health").status_code == 503


@pytest.mark.asyncio
async def test_async_stack_is_served_too() -> None:
    """Under ASGI the middleware runs async and refuses the same way."""
    rss = RssReader().read()
    with override_settings(RUNTIME_GUARD={"memory_limit": rss // 2, "interval": 60}):
        client = AsyncClient()
        await client.get("/health")
        runtime_guard.get_guard().sample()  # type: ignore[union-attr]
        assert (await client.get("/work")).status_code == 503
        assert (await client.get("/health")).status_code == 503


def test_example_project_starts_with_its_one_command() -> None:
    """``python examples/django_project/manage.py runserver`` serves /, /health and /metrics."""
    port = servers.free_port()
    command = [sys.executable, str(EXAMPLES / "django_project" / "manage.py"), "runserver"]
    proc = subprocess.Popen(
        [*command, f"127.0.0.1:{port}", "--noreload"],
        env={**os.environ, "EXAMPLE_LEAK": ""},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None
            try:
                health = httpx.get(base + "/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health.json()["status"] in ("ok", "degraded")
        assert "pid" in httpx.get(base + "/").json()
        assert "runtime_guard_pressure_level" in httpx.get(base + "/metrics").text
    finally:
        proc.terminate()
        proc.wait(30)


def test_status_page_and_detail_need_loopback_or_the_token() -> None:
    """Remote clients get 403 for the page and figures-only health; the token lets them in."""
    rss = RssReader().read()
    options = {"memory_limit": rss * 10, "interval": 60, "status_path": "/_guard", "detail": True}
    with override_settings(RUNTIME_GUARD=options):
        remote = Client(REMOTE_ADDR="10.0.0.5")
        assert remote.get("/_guard").status_code == 403
        assert "sources" not in remote.get("/health").json()
        local = Client()
        assert local.get("/_guard").status_code == 200
        assert "sources" in local.get("/health").json()
        assert local.get("/_guard", HTTP_X_FORWARDED_FOR="203.0.113.1").status_code == 403
    runtime_guard.uninstall()
    with override_settings(RUNTIME_GUARD={**options, "status_token": "tok"}):
        remote = Client(REMOTE_ADDR="10.0.0.5")
        assert remote.get("/_guard", HTTP_AUTHORIZATION="Bearer tok").status_code == 200
        assert remote.get("/_guard?token=tok").status_code == 200
        assert Client().get("/_guard").status_code == 403


def test_the_probe_routes_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/livez and /readyz (here moved by ``ready_path``) are answered from the settings."""
    monkeypatch.setenv("RUNTIME_GUARD_CONTAINER_DIR", str(tmp_path))
    with override_settings(RUNTIME_GUARD={"interval": 60, "ready_path": "/ready"}):
        client = Client()
        assert client.get("/livez").json()["status"] == "ok"
        ready = client.get("/ready")
        assert ready.status_code == 200
        assert [w["pid"] for w in ready.json()["workers"]] == [os.getpid()]
