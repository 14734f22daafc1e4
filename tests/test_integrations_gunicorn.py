"""gunicorn hooks: a guard per worker, graceful recycling with jitter and a minimum lifetime."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import servers

from runtime_guard import signals
from runtime_guard.integrations import gunicorn as guard_hooks
from runtime_guard.integrations._recycle import Recycler, attach_recycler
from runtime_guard.testing import make_guard

APP = textwrap.dedent(
    """
    import os, time
    import runtime_guard
    from runtime_guard import signals
    from runtime_guard.integrations.wsgi import GuardMiddleware

    def inner(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/slow":
            time.sleep(1.5)
        elif path == "/restart":
            guard = runtime_guard.get_guard()
            guard.send(signals.restart_requested, reason="asked by the test")
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    app = GuardMiddleware(inner)
    """
)

CONFIG = textwrap.dedent(
    """
    from runtime_guard.integrations.gunicorn import child_exit, on_starting, post_fork
    worker_class = "gthread"
    workers = 1
    threads = 4
    graceful_timeout = 20
    """
)


def test_recycler_waits_for_the_minimum_lifetime_plus_jitter() -> None:
    """The delay is the lifetime left plus a bounded jitter: a young worker never recycles."""
    guard = make_guard()
    try:
        recycler = Recycler(guard, lambda reason: None, server="t", min_lifetime=100, jitter=5)
        delays = [recycler.delay() for _ in range(50)]
        assert all(95 <= d <= 105 for d in delays)
        assert max(delays) - min(delays) > 0.5  # jitter really spreads workers out
        recycler.started -= 200
        assert all(0 <= recycler.delay() <= 5 for _ in range(50))
        recycler.close(guard)
    finally:
        guard.stop()


def test_recycle_is_called_once_per_request_storm() -> None:
    """Many restart_requested signals recycle the worker once, with the first reason."""
    guard = make_guard()
    calls: list[str] = []
    done = threading.Event()

    def stop(reason: str) -> None:
        calls.append(reason)
        done.set()

    try:
        attach_recycler(guard, stop, "test", min_lifetime=0, jitter=0)
        for i in range(5):
            guard.send(signals.restart_requested, reason=f"r{i}")
        guard.flush_signals()
        assert done.wait(5)
        time.sleep(0.1)
        assert calls == ["r0"]
        assert guard.health()["recycle_scheduled"] is True
    finally:
        guard.stop()


def test_hooks_validate_options_in_the_master() -> None:
    """A bad option fails when the config module is loaded, not in every worker."""
    from runtime_guard.config import ConfigError

    with pytest.raises(ConfigError, match="recycle_jitter"):
        guard_hooks.hooks(recycle_jitter=-1)


def test_on_starting_clears_old_multiprocess_files(tmp_path: Path, monkeypatch: Any) -> None:
    """A previous run's Prometheus files are removed when gunicorn starts."""
    (tmp_path / "gauge_liveall_1.db").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    guard_hooks.on_starting(None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def _wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gunicorn exited"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def test_real_gunicorn_recycles_gracefully(tmp_path: Path) -> None:
    """On restart_requested a real worker finishes its in-flight request, exits, is replaced."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "conf.py").write_text(CONFIG)
    port = servers.free_port()
    env = {
        **os.environ,
        "RUNTIME_GUARD_RECYCLE_MIN_LIFETIME": "0",
        "RUNTIME_GUARD_RECYCLE_JITTER": "0",
        "RUNTIME_GUARD_INTERVAL": "0.2",
    }
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "conf.py",
                "-b",
                f"127.0.0.1:{port}",
                "app:app",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(base + "/health", proc)
        first = httpx.get(base + "/pid").text
        slow: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: slow.update(r=httpx.get(base + "/slow", timeout=30)), daemon=True
        )
        thread.start()
        time.sleep(0.3)  # the slow request is in flight
        assert httpx.get(base + "/restart").status_code == 200
        thread.join(30)
        assert slow["r"].status_code == 200
        assert slow["r"].text == first  # the old worker finished it
        deadline = time.monotonic() + 30
        pid = first
        while pid == first and time.monotonic() < deadline:
            try:
                pid = httpx.get(base + "/pid", timeout=5).text
            except httpx.TransportError:
                time.sleep(0.1)
        assert pid != first
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert f"recycling gunicorn worker pid {first}" in text
    assert "asked by the test" in text
