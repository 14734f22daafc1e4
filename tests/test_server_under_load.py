"""The proof: real gunicorn and uvicorn serving the leaking example under load, saved by the guard.

Each guarded run starts the example app (``examples/``) with the leaks switched on, a real
redis-server, and a per-worker memory budget (``process_limit``) a little above the worker's
measured baseline; a separate process drives paced load and polls ``/health`` and
``/metrics``. The assertions read only what the server said: its responses and its log.
The unguarded runs put the same load on the same app without the guard and record where
memory ends.

This file is also the load generator: ``python tests/test_server_under_load.py load ...``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MB = 1024 * 1024

# The budget over the measured baseline: the leak crosses ELEVATED, HIGH (recommendations
# shed, model dropped) and CRITICAL (503s) within seconds at this load.
HEADROOM = 48 * MB
LOAD_SECONDS = 40.0
RATE = 60.0  # requests per second, across the paced load threads
GUARD_ENV = {
    "RUNTIME_GUARD_INTERVAL": "0.25",
    "RUNTIME_GUARD_RESTART_AFTER": "3",
    "RUNTIME_GUARD_RECYCLE_MIN_LIFETIME": "5",
    "RUNTIME_GUARD_RECYCLE_JITTER": "2",
    "RUNTIME_GUARD_LEAK_WINDOW": "1",
    "RUNTIME_GUARD_LEAK_WARMUP": "2",
    "RUNTIME_GUARD_LEAK_DIAGNOSIS_WINDOW": "3",
    "RUNTIME_GUARD_RELIEF_COOLDOWN": "2",
    # The run compresses hours into seconds; the default 5 % of wall time since start would
    # leave tracemalloc no time for the diagnosis that names the line.
    "RUNTIME_GUARD_TRACEMALLOC_DUTY_CYCLE": "0.5",
}
EXEMPT = ("/admin/ping", "/health", "/metrics")


# -- the load generator (runs in its own process) -----------------------------------------


def _request(port: int, path: str) -> dict[str, Any]:
    started = time.monotonic()
    record: dict[str, Any] = {"t": started, "path": path}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
    except OSError as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        return record
    record["status"] = response.status
    record["retry_after"] = response.getheader("Retry-After")
    record["pressure"] = response.getheader("X-Runtime-Guard-Pressure")
    if path == "/metrics":
        record["metrics"] = b"runtime_guard_pressure_level" in body
    elif response.headers.get_content_type() == "application/json":
        data = json.loads(body)
        if path == "/health":
            record["health"] = {k: data.get(k) for k in ("status", "pressure", "shed_features")}
        elif path == "/":
            record["pid"] = data.get("pid")
            record["recommendations"] = "recommendations" in data
    return record


def run_load(port: int, seconds: float, rate: float, out: str, threads: int = 6) -> None:
    """Paced load on ``/`` and ``/admin/ping``, and polls of ``/health`` and ``/metrics``."""
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def worker(index: int) -> None:
        period = threads / rate
        next_at = time.monotonic() + index * period / threads
        n = 0
        while time.monotonic() < end:
            path = "/admin/ping" if n % 10 == index % 10 else "/"
            record = _request(port, path)
            with lock:
                records.append(record)
            n += 1
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))

    def poller() -> None:
        while time.monotonic() < end:
            for path in ("/health", "/metrics"):
                record = _request(port, path)
                with lock:
                    records.append(record)
            time.sleep(0.25)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    pool.append(threading.Thread(target=poller))
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    with open(out, "w") as f:
        json.dump(sorted(records, key=lambda r: r["t"]), f)


# -- servers ------------------------------------------------------------------------------


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def workers(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        # uvicorn's spawn start method adds a resource tracker: not a worker.
        return [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]

    def rss(self) -> list[int]:
        sizes = []
        for worker in self.workers():
            with contextlib.suppress(psutil.NoSuchProcess):
                sizes.append(worker.memory_info().rss)
        return sizes

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return self.log.read_text(errors="replace")


def start_server(kind: str, tmp: Path, redis_url: str, **env: str) -> Server:
    import servers

    port = servers.free_port()
    environment = {
        **os.environ,
        "EXAMPLE_REDIS_URL": redis_url,
        "EXAMPLE_LEAK": "cache,redis",
        "EXAMPLE_CACHE_BYTES": str(64 * 1024),
        "EXAMPLE_BIND": f"127.0.0.1:{port}",
        "EXAMPLE_WORKERS": "2",
        **env,
    }
    if kind == "gunicorn":
        command = [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLES / "gunicorn.conf.py")]
        command.append("flask_app:app")
    else:
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES)]
        command += ["fastapi_app:app", "--workers", "2", "--port", str(port), "--no-access-log"]
    log = tmp / f"{kind}-{env.get('EXAMPLE_GUARD', '1')}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=out)
    server = Server(kind, proc, port, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        if len(server.workers()) >= 2 and _request(port, "/admin/ping").get("status") == 200:
            for _ in range(20):  # warm up: model loaded, imports done
                _request(port, "/")
            return server
        time.sleep(0.2)
    server.stop()
    raise AssertionError(f"{kind} did not come up:\n{log.read_text()}")


def drive(server: Server, seconds: float, tmp: Path) -> list[dict[str, Any]]:
    out = tmp / f"load-{server.kind}-{time.monotonic_ns()}.json"
    command = [sys.executable, __file__, "load", str(server.port), str(seconds), str(RATE)]
    subprocess.run([*command, str(out)], check=True, timeout=seconds + 60)
    records: list[dict[str, Any]] = json.loads(out.read_text())
    return records


@pytest.fixture(scope="module")
def baselines(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Per-worker RSS of each server with the guard on and the leaks off, after warm-up."""
    tmp = tmp_path_factory.mktemp("baseline")
    found = {}
    for kind in ("gunicorn", "uvicorn"):
        server = start_server(kind, tmp, redis_server.url, EXAMPLE_LEAK="")
        try:
            found[kind] = max(server.rss())
        finally:
            server.stop()
    return found


def _leaking_line(text: str = "_responses[key] = ") -> int:
    for number, line in enumerate((EXAMPLES / "leaky.py").read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError("leaking line not found in examples/leaky.py")


@pytest.fixture(params=["gunicorn", "uvicorn"])
def guarded(
    request: pytest.FixtureRequest, redis_server: Any, baselines: dict[str, int], tmp_path: Path
) -> Iterator[tuple[Server, int]]:
    kind = request.param
    limit = baselines[kind] + HEADROOM
    server = start_server(
        kind, tmp_path, redis_server.url, RUNTIME_GUARD_PROCESS_LIMIT=str(limit), **GUARD_ENV
    )
    yield server, limit
    server.stop()


@pytest.mark.slow
def test_guard_saves_the_leaking_server_under_load(guarded: tuple[Server, int]) -> None:
    """Leak reported, features shed and restored, 503s only while critical, graceful recycle."""
    server, limit = guarded
    first_workers = {w.pid for w in server.workers()}
    records = drive(server, LOAD_SECONDS, server.log.parent)
    log = server.stop()

    # Zero failed requests: every request got an answer, and the only errors are the
    # deliberate 503s.
    failed = [r for r in records if "error" in r or r["status"] not in (200, 503)]
    assert not failed, failed[:5]
    refused = [r for r in records if r["status"] == 503 and r["path"] not in ("/health",)]
    assert refused, "the guard never refused: the leak did not reach CRITICAL"
    for r in refused:
        assert r["path"] not in EXEMPT
        assert (r["pressure"], r["retry_after"]) == ("critical", "10")
    assert all(r["status"] == 200 for r in records if r["path"] in ("/admin/ping", "/metrics"))

    # /health and /metrics answered throughout; health says 503 exactly when critical.
    health = [r for r in records if r["path"] == "/health"]
    metrics = [r for r in records if r["path"] == "/metrics"]
    assert len(health) > LOAD_SECONDS and len(metrics) > LOAD_SECONDS
    assert all(r["metrics"] for r in metrics)
    for r in health:
        assert (r["status"] == 503) == (r["health"]["status"] == "critical")
    assert any(r["health"]["pressure"] == "critical" for r in health)

    # Features shed, then back: in the log, and in the responses themselves.
    # A fast step can jump from ELEVATED straight to CRITICAL between two samples.
    assert re.search(r"feature 'recommendations' shed at (HIGH|CRITICAL)", log)
    assert "feature 'recommendations' restored" in log
    assert any("recommendations" in (r["health"]["shed_features"] or []) for r in health)
    served = [r for r in records if r["path"] == "/" and r["status"] == 200]
    without = [i for i, r in enumerate(served) if not r["recommendations"]]
    assert without and any(r["recommendations"] for r in served[without[0] :])

    # The leak was reported with the leaking line.
    assert "leak suspected" in log
    assert re.search(rf"leaky\.py:{_leaking_line()}\b", log), log[-3000:]
    client_line = _leaking_line("redis.Redis.from_url(")
    assert re.search(rf"unreleased objects: .*redis.*leaky\.py:{client_line}\b", log)

    # Recycled gracefully: the guard asked, a worker went, fresh workers served.
    assert f"recycling {server.kind} worker pid" in log
    pids = {r["pid"] for r in served}
    assert pids - first_workers, "no fresh worker served requests"
    peak = max(float(m) for m in re.findall(r"rss ([0-9.]+) MiB", log)) * MB
    # Between two samples a worker keeps serving (uvicorn runs handlers in a thread pool) and
    # a restore reloads the model, so a worker can pass its budget by a step; what the guard
    # prevents is that it keeps going, as the unguarded run does.
    assert peak < limit * 1.25, "a worker ran well past its budget"
    print(
        f"\nguarded {server.kind}: {len(records)} requests, {len(refused)} refused (503), "
        f"{len(pids)} worker pids served, peak RSS {peak / MB:.0f} MiB, "
        f"budget {limit / MB:.0f} MiB"
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_same_load_without_the_guard(
    kind: str, redis_server: Any, baselines: dict[str, int], tmp_path: Path
) -> None:
    """Without the guard the same load grows the workers past the budget the guard kept."""
    server = start_server(kind, tmp_path, redis_server.url, EXAMPLE_GUARD="0")
    try:
        records = drive(server, LOAD_SECONDS, tmp_path)
        end = server.rss()
    finally:
        server.stop()
    budget = baselines[kind] + HEADROOM
    print(  # the record the issue asks for: where memory ends without the guard
        f"\nunguarded {kind}: {len(records)} requests in {LOAD_SECONDS:.0f} s, "
        f"worker RSS at the end {[round(r / MB) for r in end]} MiB, "
        f"guarded budget {budget / MB:.0f} MiB"
    )
    # Without the middleware there is no /health or /metrics; the app itself never refuses.
    app = [r for r in records if r["path"] in ("/", "/admin/ping")]
    assert all(r.get("status") == 200 for r in app)
    assert max(end) > budget, "the leak did not outgrow the budget: the guarded run proves nothing"


if __name__ == "__main__" and sys.argv[1:2] == ["load"]:
    port_arg, seconds_arg, rate_arg, out_arg = sys.argv[2:6]
    run_load(int(port_arg), float(seconds_arg), float(rate_arg), out_arg)
