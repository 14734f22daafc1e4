"""The probe routes on real gunicorn and uvicorn servers with several workers: one view of
the container from any worker, /readyz through a drain, /livez at CRITICAL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import servers

from runtime_guard import container

pytestmark = pytest.mark.timeout(180)

WSGI_APP = textwrap.dedent(
    """
    import os
    import runtime_guard
    from runtime_guard import signals
    from runtime_guard.integrations.wsgi import GuardMiddleware

    def inner(environ, start_response):
        if environ["PATH_INFO"] == "/drain":
            runtime_guard.get_guard().send(signals.restart_requested, reason="drain test")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]

    app = GuardMiddleware(inner)
    """
)

GUNICORN_CONFIG = textwrap.dedent(
    """
    from runtime_guard.integrations.gunicorn import child_exit, on_starting, post_fork
    worker_class = "gthread"
    threads = 4
    graceful_timeout = 20
    """
)

ASGI_APP = textwrap.dedent(
    """
    import os
    import runtime_guard
    from runtime_guard import signals
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from runtime_guard.integrations.asgi import GuardMiddleware, lifespan

    async def pid(request):
        return PlainTextResponse(str(os.getpid()))

    async def drain(request):
        runtime_guard.get_guard().send(signals.restart_requested, reason="drain test")
        return PlainTextResponse(str(os.getpid()))

    routes = [Route("/pid", pid), Route("/drain", drain)]
    app = GuardMiddleware(Starlette(routes=routes, lifespan=lifespan()))
    """
)


@dataclass
class Server:
    """A real server of several guarded workers, sharing one container directory."""

    kind: str
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, timeout=10)

    def ready(self) -> tuple[int, dict[str, Any]]:
        response = self.get("/readyz")
        return response.status_code, response.json()

    def ready_body(self, code: int) -> dict[str, Any] | None:
        """The /readyz body when it answers ``code``, else ``None``."""
        answered, body = self.ready()
        return body if answered == code else None

    def pids(self) -> set[int]:
        return {w["pid"] for w in self.ready()[1]["workers"]}

    def settled(self, workers: int) -> set[int] | None:
        """The workers' pids once ``workers`` of them have published their figures and the
        one answering sees the same, else ``None``. A worker that has not sampled yet
        counts itself in its own view while the others miss it."""
        directory = self.log.parent / "container"
        published = {w["pid"] for w in container.read_container(str(directory)).workers}
        if len(published) != workers:
            return None
        return published if self.pids() == published else None

    def until(self, check: Any, what: str, timeout: float = 60) -> Any:
        """Ask until ``check()`` is truthy; its value. Fails naming ``what`` and the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                found = check()
            except (httpx.TransportError, ValueError, KeyError):
                found = None
            if found:
                return found
            time.sleep(0.1)
        children = [
            (c.pid, c.status()) for c in psutil.Process(self.proc.pid).children(recursive=True)
        ]
        raise AssertionError(f"{what}; processes {children}; log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def start(kind: str, tmp_path: Path, workers: int, **env: str) -> Server:
    """``kind`` ("gunicorn" or "uvicorn") serving its app with ``workers`` workers."""
    port = servers.free_port()
    environment = {
        **os.environ,
        "RUNTIME_GUARD_CONTAINER_DIR": str(tmp_path / "container"),
        "RUNTIME_GUARD_INTERVAL": "0.2",
        "RUNTIME_GUARD_RECYCLE_JITTER": "0",
        "RUNTIME_GUARD_RESTART_AFTER": "off",
        **env,
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if kind == "gunicorn":
        (tmp_path / "app.py").write_text(WSGI_APP)
        (tmp_path / "conf.py").write_text(GUNICORN_CONFIG)
        command = [sys.executable, "-m", "gunicorn", "-c", "conf.py", "-w", str(workers)]
        command += ["-b", f"127.0.0.1:{port}", "app:app"]
    else:
        (tmp_path / "app.py").write_text(ASGI_APP)
        command = [sys.executable, "-m", "uvicorn", "app:app", "--workers", str(workers)]
        # On a loaded test machine a worker starved of CPU misses uvicorn's 5 s health check
        # and is replaced, while the tests count workers. Not much longer either: uvicorn
        # notices a worker that exited (a recycle) only when a ping to it times out.
        command += ["--port", str(port), "--no-access-log", "--timeout-worker-healthcheck", "15"]
    log = tmp_path / f"{kind}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(kind, proc, f"http://127.0.0.1:{port}", log)
    try:
        server.until(lambda: server.settled(workers), f"{workers} workers in the view")
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def stop_after() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _dead(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_any_worker_answers_for_the_container_and_drops_a_killed_one(
    kind: str, tmp_path: Path, stop_after: list[Server]
) -> None:
    """Every worker's /readyz lists all three live workers with their own RSS; a worker
    killed with SIGKILL is gone from the next answer, and its replacement joins."""
    server = start(kind, tmp_path, 3)
    stop_after.append(server)
    answered_by: set[int] = set()
    # Probes a few at a time: one after another, an idle sync worker can win every accept.
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(25):
            for code, body in pool.map(lambda _: server.ready(), range(4)):
                assert code == 200
                assert len(body["workers"]) == 3
                this = [w for w in body["workers"] if w["this"]]
                assert len(this) == 1
                answered_by.add(this[0]["pid"])
                for worker in body["workers"]:
                    rss = psutil.Process(worker["pid"]).memory_info().rss
                    assert worker["rss_bytes"] == pytest.approx(rss, rel=0.3)
            if len(answered_by) >= 2:
                break
    assert len(answered_by) >= 2, "the kernel gave every probe to one worker"
    before = server.pids()
    victim = sorted(before)[0]
    os.kill(victim, signal.SIGKILL)
    server.until(lambda: _dead(victim), "the killed worker is dead")
    for _ in range(10):
        assert victim not in server.pids()
    replaced = server.until(lambda: server.settled(3), "a replacement in the view")
    assert victim not in replaced and len(replaced - before) == 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_readyz_stays_ready_while_one_of_several_workers_drains(
    kind: str, tmp_path: Path, stop_after: list[Server]
) -> None:
    """One worker draining for a recycle is marked so from any worker; the container stays
    ready (the others take requests) and every request is served; the worker is replaced."""
    server = start(kind, tmp_path, 3, RUNTIME_GUARD_RECYCLE_MIN_LIFETIME="6")
    stop_after.append(server)
    first = server.pids()
    drained = int(server.get("/drain").text)

    def marked() -> dict[str, Any] | None:
        body = server.ready()[1]
        workers = {w["pid"]: w for w in body["workers"]}
        return body if workers.get(drained, {}).get("draining") == "drain test" else None

    body = server.until(marked, "the draining worker marked in the view")
    assert body["ready"] is True
    for worker in body["workers"]:
        assert worker["takes_traffic"] is (worker["pid"] != drained)
    statuses = [server.get("/pid").status_code for _ in range(20)]
    assert statuses == [200] * 20
    server.until(lambda: drained not in server.pids(), "the drained worker gone", 60)
    now = server.until(lambda: server.settled(3), "its replacement in the view", 60)
    assert server.ready()[0] == 200
    assert len(now - first) == 1


@pytest.mark.slow
def test_readyz_flips_while_the_only_worker_drains(
    tmp_path: Path, stop_after: list[Server]
) -> None:
    """With one worker, draining takes the container out of service until the fresh
    worker serves: 503 from the moment the recycle is scheduled, 200 after."""
    server = start("gunicorn", tmp_path, 1, RUNTIME_GUARD_RECYCLE_MIN_LIFETIME="4")
    stop_after.append(server)
    drained = int(server.get("/drain").text)
    body = server.until(lambda: server.ready_body(503), "/readyz 503")
    assert body["ready"] is False
    assert f"worker {drained} is draining: drain test" in body["reason"]
    assert server.get("/livez").status_code == 200
    fresh = server.until(
        lambda: drained not in server.pids() and server.ready_body(200),
        "/readyz 200 from a fresh worker",
    )
    assert fresh["ready"] is True


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_livez_stays_200_at_critical(kind: str, tmp_path: Path, stop_after: list[Server]) -> None:
    """Every worker over its budget: requests and /health get 503, /readyz 503 (no worker
    takes requests), /livez 200 (nothing to restart the container for)."""
    server = start(kind, tmp_path, 2, RUNTIME_GUARD_PROCESS_LIMIT="8MB")
    stop_after.append(server)
    body = server.until(lambda: server.ready_body(503), "/readyz 503")
    assert {w["pressure"] for w in body["workers"]} == {"critical"}
    assert "critical pressure" in body["reason"]
    for _ in range(10):
        assert server.get("/livez").status_code == 200
        assert server.get("/health").status_code == 503
        assert server.get("/pid").status_code == 503
