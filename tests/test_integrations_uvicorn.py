"""uvicorn: a worker recycles through uvicorn's own graceful shutdown and is replaced."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import servers

from runtime_guard.integrations import uvicorn as guard_uvicorn

APP = textwrap.dedent(
    """
    import asyncio, os
    import runtime_guard
    from runtime_guard import signals
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from runtime_guard.integrations.asgi import GuardMiddleware, lifespan

    async def pid(request):
        return PlainTextResponse(str(os.getpid()))

    async def restart(request):
        # The request that asks is itself in flight while the worker shuts down.
        runtime_guard.get_guard().send(signals.restart_requested, reason="asked by the test")
        await asyncio.sleep(1.5)
        return PlainTextResponse(str(os.getpid()))

    routes = [Route("/pid", pid), Route("/restart", restart)]
    app = GuardMiddleware(Starlette(routes=routes, lifespan=lifespan(interval=0.2)))
    """
)


def test_find_server_is_none_outside_uvicorn() -> None:
    """Outside a serving uvicorn no server is found (SIGTERM is not uvicorn's)."""
    assert guard_uvicorn.find_server() is None


def test_real_uvicorn_worker_recycles_gracefully(tmp_path: Path) -> None:
    """On restart_requested a worker finishes in-flight requests and uvicorn starts a new one."""
    (tmp_path / "app.py").write_text(APP)
    port = servers.free_port()
    env = {
        **os.environ,
        "RUNTIME_GUARD_RECYCLE_MIN_LIFETIME": "0",
        "RUNTIME_GUARD_RECYCLE_JITTER": "0",
    }
    log = tmp_path / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "app:app", "--workers", "2", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"

    def pids(count: int) -> set[str]:
        seen: set[str] = set()
        for _ in range(count):
            try:
                seen.add(httpx.get(base + "/pid", timeout=5).text)
            except httpx.TransportError:
                time.sleep(0.1)
        return seen

    try:
        deadline = time.monotonic() + 30
        while not pids(1) and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
        restarted = httpx.get(base + "/restart", timeout=30)
        assert restarted.status_code == 200  # answered by the worker that is shutting down
        recycled = restarted.text
        deadline = time.monotonic() + 30
        while log.read_text().count("Started server process") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert log.read_text().count("Started server process") == 3  # a fresh worker
        assert recycled not in pids(10)
        assert httpx.get(base + "/health").status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert f"recycling uvicorn worker pid {recycled}" in text
