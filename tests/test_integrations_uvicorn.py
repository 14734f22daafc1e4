"""uvicorn: a worker recycles through uvicorn's own graceful shutdown and is replaced."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
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


def _serve_app(
    tmp_path: Path, *options: str, app: str = APP, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path, int]:
    """uvicorn serving ``app``, recycling as soon as asked: the process, its log, its port."""
    (tmp_path / "app.py").write_text(app)
    port = servers.free_port()
    env = {
        **os.environ,
        "RUNTIME_GUARD_RECYCLE_MIN_LIFETIME": "0",
        "RUNTIME_GUARD_RECYCLE_JITTER": "0",
        **(env or {}),
    }
    log = tmp_path / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "app:app", *options, "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return proc, log, port


def test_find_server_is_none_outside_uvicorn() -> None:
    """Outside a serving uvicorn no server is found (SIGTERM is not uvicorn's)."""
    assert guard_uvicorn.find_server() is None


@pytest.mark.slow
def test_real_uvicorn_worker_recycles_gracefully(tmp_path: Path) -> None:
    """On restart_requested a worker finishes in-flight requests and uvicorn starts a new one."""
    proc, log, port = _serve_app(tmp_path, "--workers", "2")
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


@pytest.mark.slow
def test_a_connection_whose_request_comes_late_is_answered_not_reset(tmp_path: Path) -> None:
    """A connection accepted before the recycle, its request read only later, gets its answer."""
    proc, log, port = _serve_app(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/pid", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        late = socket.create_connection(("127.0.0.1", port), timeout=10)
        restart = threading.Thread(
            target=httpx.get, args=(f"http://127.0.0.1:{port}/restart",), kwargs={"timeout": 30}
        )
        restart.start()
        time.sleep(1.2)  # the worker stopped accepting and its drain is over
        late.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := late.recv(65536):
            answer += chunk
        late.close()
        restart.join(30)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


GUARD_IN_LOOP_APP = textwrap.dedent(
    """
    import asyncio, json
    import runtime_guard

    state = {"inside": 0, "peak": 0}
    jobs = runtime_guard.limiter("uvicorn-jobs", 2, {"high": 1})

    async def limited():
        async with jobs:
            state["inside"] += 1
            state["peak"] = max(state["peak"], state["inside"])
            await asyncio.sleep(0.05)
            state["inside"] -= 1
        return {"peak": state["peak"], "enabled": runtime_guard.enabled("extras")}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/install":
            guard = runtime_guard.install(interval=0.05)
            body = {"samples": len(guard.history), "health": guard.health()}
        elif path == "/health":
            guard = runtime_guard.get_guard()
            guard.sample()
            body = guard.health()
        elif path == "/limited":
            body = await limited()
        elif path == "/uninstall":
            runtime_guard.uninstall()
            body = {"guard": runtime_guard.get_guard() is not None}
        else:
            body = {}
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})
    """
)


@pytest.mark.slow
def test_guard_installed_and_used_inside_uvicorns_event_loop(tmp_path: Path) -> None:
    """A real uvicorn app that calls install(), health(), a limiter and uninstall() from its
    handlers answers every request, keeps the limiter within capacity and logs no error."""
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "loop_app.py").write_text(GUARD_IN_LOOP_APP)
    port = servers.free_port()
    log = tmp_path / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "loop_app:app", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        installed = None
        while installed is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                installed = httpx.get(base + "/install", timeout=10)
            except httpx.TransportError:
                time.sleep(0.1)
        assert installed is not None and installed.status_code == 200
        assert installed.json()["health"]["status"] in ("ok", "degraded", "critical")
        health = httpx.get(base + "/health", timeout=10).json()
        assert health["samples"] >= 1 and health["rss_bytes"] > 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: httpx.get(base + "/limited", timeout=30), range(16)))
        assert [a.status_code for a in answers] == [200] * 16
        assert max(a.json()["peak"] for a in answers) <= 2
        assert httpx.get(base + "/uninstall", timeout=10).json() == {"guard": False}
        again = httpx.get(base + "/install", timeout=10)
        assert again.status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text, text


@pytest.mark.slow
def test_a_connection_accepted_just_before_a_recycle_is_answered(tmp_path: Path) -> None:
    """A client whose connection a recycling worker has accepted but whose request it has not
    read yet gets its answer, not a reset: the worker stops accepting before shutting down."""
    import socket
    import threading

    proc, log, port = _serve_app(tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(base + "/pid", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
        waiting = socket.create_connection(("127.0.0.1", port), timeout=10)
        time.sleep(0.1)  # accepted, and idle: no request yet
        asked = threading.Thread(
            target=httpx.get, args=(base + "/restart",), kwargs={"timeout": 30}
        )
        asked.start()
        time.sleep(0.3)  # the worker has been told to recycle
        waiting.sendall(b"GET /pid HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        answer = b""
        try:
            while chunk := waiting.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        finally:
            waiting.close()
        asked.join(30)
        assert answer.startswith(b"HTTP/1.1 200"), (answer, log.read_text())
        assert proc.wait(30) == 0  # one worker: it recycled by exiting, gracefully
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    assert "recycling uvicorn worker pid" in log.read_text()


@pytest.mark.slow
def test_a_recycled_uvicorn_worker_leaves_the_multiprocess_metrics(tmp_path: Path) -> None:
    """Under uvicorn --workers 2 with PROMETHEUS_MULTIPROC_DIR, a recycled worker's gauges and
    live files are gone once it has exited, and scrapes show the fresh worker instead."""
    import psutil
    from prometheus_client.parser import text_string_to_metric_families

    directory = tmp_path / "prom"
    directory.mkdir()
    app = APP.replace("lifespan=lifespan(interval=0.2)))", "lifespan=lifespan(interval=0.2)),")
    app += '    metrics_path="/metrics")\n'
    proc, log, port = _serve_app(
        tmp_path, "--workers", "2", app=app, env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    )
    base = f"http://127.0.0.1:{port}"

    def exported() -> set[str]:
        try:
            text = httpx.get(base + "/metrics", timeout=5).text
        except httpx.TransportError:
            return set()
        return {
            sample.labels["pid"]
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "runtime_guard_memory_rss_bytes" and sample.value > 0
        }

    try:
        deadline = time.monotonic() + 30
        while len(exported()) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert len(exported()) == 2
        recycled = httpx.get(base + "/restart", timeout=30).text
        deadline = time.monotonic() + 30
        while psutil.pid_exists(int(recycled)) and time.monotonic() < deadline:
            time.sleep(0.1)
        # No scrape since it exited: its own shutdown took its live gauges away.
        assert f"gauge_liveall_{recycled}.db" not in {p.name for p in directory.iterdir()}
        deadline = time.monotonic() + 30
        while len(exported()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = exported()
        assert len(pids) == 2 and recycled not in pids
    finally:
        proc.terminate()
        proc.wait(30)
