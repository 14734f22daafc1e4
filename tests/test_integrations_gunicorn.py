"""gunicorn hooks: a guard per worker, graceful recycling with jitter and a minimum lifetime."""

from __future__ import annotations

import json
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


def _gunicorn(
    tmp_path: Path, config: str, app: str = APP, *options: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path, str]:
    """A real gunicorn serving ``app`` with ``config``, recycling as soon as asked: the
    process, the file its stdout and stderr go to, its base URL once it answers."""
    (tmp_path / "app.py").write_text(app)
    (tmp_path / "conf.py").write_text(config)
    port = servers.free_port()
    env = {
        **os.environ,
        "RUNTIME_GUARD_RECYCLE_MIN_LIFETIME": "0",
        "RUNTIME_GUARD_RECYCLE_JITTER": "0",
        "RUNTIME_GUARD_INTERVAL": "0.2",
        **(env or {}),
    }
    log = tmp_path / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "-c", "conf.py", "-b", f"127.0.0.1:{port}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, *options, "app:app"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(base + "/pid", proc)
    except BaseException:
        _stop(proc)
        raise
    return proc, log, base


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def _wait_for_another_worker(base: str, first: str) -> None:
    deadline = time.monotonic() + 30
    pid = first
    while pid == first and time.monotonic() < deadline:
        try:
            pid = httpx.get(base + "/pid", timeout=5).text
        except httpx.TransportError:
            time.sleep(0.1)
    assert pid != first


def _recycle(base: str) -> str:
    """Ask the worker to recycle; return its pid once another worker answers."""
    first = httpx.get(base + "/restart", timeout=10).text
    _wait_for_another_worker(base, first)
    return first


@pytest.mark.slow
def test_real_gunicorn_recycles_gracefully(tmp_path: Path) -> None:
    """On restart_requested a real worker finishes its in-flight request, exits, is replaced."""
    proc, log, base = _gunicorn(tmp_path, CONFIG)
    try:
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
        _wait_for_another_worker(base, first)
    finally:
        _stop(proc)
    text = log.read_text()
    assert f"recycling gunicorn worker pid {first}" in text
    assert "asked by the test" in text


# The app sets up logging in the worker, after the fork, as apps do: a JSON handler on the
# root logger writing to the file APP_JSON_LOG (or to stderr when LOG_TO is "stderr").
JSON_LOGGING = textwrap.dedent(
    """
    import json, logging, os, sys

    class JsonLines(logging.Formatter):
        def format(self, record):
            return json.dumps({"logger": record.name, "level": record.levelname,
                               "message": record.getMessage()})

    if os.environ.get("LOG_TO") == "stderr":
        _handler = logging.StreamHandler(sys.stderr)
    else:
        _handler = logging.FileHandler(os.environ["APP_JSON_LOG"])
    _handler.setFormatter(JsonLines())
    logging.getLogger().addHandler(_handler)
    logging.getLogger().setLevel(logging.INFO)
    """
)


def _json_lines(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_the_guards_log_reaches_the_apps_root_handler(tmp_path: Path) -> None:
    """A gunicorn worker whose app puts a JSON handler on the root logger after the fork gets
    the guard's records through it (the guard leaves logging to the host)."""
    json_log = tmp_path / "app.jsonl"
    proc, _, base = _gunicorn(
        tmp_path, CONFIG, JSON_LOGGING + APP, env={"APP_JSON_LOG": str(json_log)}
    )
    try:
        recycled = _recycle(base)
    finally:
        _stop(proc)
    guard_lines = [r for r in _json_lines(json_log) if r["logger"] == "runtime_guard"]
    assert any(f"recycling gunicorn worker pid {recycled}" in r["message"] for r in guard_lines)


ERROR_LOG_CONFIG = textwrap.dedent(
    """
    from runtime_guard.integrations import gunicorn as guard_hooks

    globals().update(guard_hooks.hooks(error_log=True))
    worker_class = "gthread"
    workers = 1
    threads = 4
    graceful_timeout = 20
    """
)


@pytest.mark.parametrize("root", ["json-file", "same-file", "stderr", "none"])
def test_error_log_opt_in_writes_each_guard_line_once(tmp_path: Path, root: str) -> None:
    """With hooks(error_log=True) the guard's lines reach gunicorn's error log exactly once,
    whatever root handler the app adds (another file, the error log's own file, stderr, none),
    and still reach that root handler."""
    error_log = tmp_path / "error.log"
    json_log = error_log if root == "same-file" else tmp_path / "app.jsonl"
    app = APP if root == "none" else JSON_LOGGING + APP
    env = {"APP_JSON_LOG": str(json_log), "LOG_TO": root}
    options = ["--error-logfile", "-" if root == "stderr" else str(error_log)]
    proc, log, base = _gunicorn(tmp_path, ERROR_LOG_CONFIG, app, *options, env=env)
    try:
        recycled = _recycle(base)
    finally:
        _stop(proc)
    written = (log if root == "stderr" else error_log).read_text()
    line = f"recycling gunicorn worker pid {recycled} in"
    assert written.count(line) == 1, written
    assert written.count(f"guard installed in gunicorn worker pid {recycled}") == 1, written
    if root in ("json-file", "same-file"):
        assert [r["logger"] for r in _json_lines(json_log) if line in r["message"]] == [
            "runtime_guard"
        ]
    if root != "stderr":
        assert line not in log.read_text()  # nothing left over for stderr


OWN_POST_FORK = """
def post_fork(server, worker):
    server.log.info("the config's own post_fork ran in %s", worker.pid)
"""
GUARD_IMPORT = (
    "from runtime_guard.integrations.gunicorn import child_exit, on_starting, post_fork\n"
)
SETTINGS = 'worker_class = "gthread"\nworkers = 1\nthreads = 4\n'


def _guarded(base: str) -> bool:
    return "not installed" not in httpx.get(base + "/health", timeout=5).text


def test_a_config_post_fork_replacing_the_guards_is_named(tmp_path: Path) -> None:
    """A config that imports the guard's post_fork and then defines its own logs a warning
    naming post_fork: the worker runs without a guard."""
    proc, log, base = _gunicorn(tmp_path, GUARD_IMPORT + OWN_POST_FORK + SETTINGS)
    try:
        pid = httpx.get(base + "/pid").text
        assert not _guarded(base)
    finally:
        _stop(proc)
    text = log.read_text()
    assert "the config's own post_fork ran" in text
    assert (
        "gunicorn's post_fork is post_fork from the config file, which does not call "
        f"runtime_guard's post_fork: worker pid {pid} runs without a guard"
    ) in text


def test_a_config_post_fork_replaced_by_the_guards_is_named(tmp_path: Path) -> None:
    """A config that defines its own post_fork and then imports the guard's logs a warning
    naming post_fork and the line of the def that never runs."""
    proc, log, base = _gunicorn(tmp_path, OWN_POST_FORK + GUARD_IMPORT + SETTINGS)
    try:
        assert _guarded(base)  # the guard's post_fork ran
    finally:
        _stop(proc)
    text = log.read_text()
    assert "the config's own post_fork ran" not in text
    assert "conf.py defines its own post_fork (line 2), but gunicorn calls" in text
    assert text.count("defines its own post_fork") == 1


def test_a_composed_post_fork_runs_both_without_warning(tmp_path: Path) -> None:
    """A post_fork of the config's own that calls the guard's runs both, and nothing warns."""
    composed = textwrap.dedent(
        """
        from runtime_guard.integrations import gunicorn as guard_hooks

        on_starting = guard_hooks.on_starting
        child_exit = guard_hooks.child_exit

        def post_fork(server, worker):
            guard_hooks.post_fork(server, worker)
            server.log.info("the config's own post_fork ran in %s", worker.pid)
        """
    )
    proc, log, base = _gunicorn(tmp_path, composed + SETTINGS)
    try:
        assert _guarded(base)
    finally:
        _stop(proc)
    text = log.read_text()
    assert "the config's own post_fork ran" in text
    assert "runtime_guard: gunicorn's" not in text and "defines its own" not in text
