"""uWSGI: the guard names the options it lacks at install(), samples in every worker when
they are there, and recycles one worker through uWSGI's graceful reload."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import servers

from runtime_guard.integrations import uwsgi as guard_uwsgi
from runtime_guard.integrations.uwsgi import Setup, missing_options

APP = textwrap.dedent(
    """
    import os, time
    import runtime_guard
    from runtime_guard import signals
    from runtime_guard.integrations.prometheus import install_metrics
    from runtime_guard.integrations.wsgi import GuardMiddleware

    runtime_guard.install(interval=0.1)
    install_metrics()

    def inner(environ, start_response):
        if environ["PATH_INFO"] == "/restart":
            runtime_guard.get_guard().send(signals.restart_requested, reason="asked by the test")
            time.sleep(1.0)  # in flight while the worker is told to reload
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]

    application = GuardMiddleware(inner)
    """
)

THREADS = "Python threads are off"
FORK_HOOKS = "--py-call-uwsgi-fork-hooks"


def _uwsgi_binary() -> str | None:
    beside = Path(sysconfig.get_path("scripts")) / "uwsgi"
    return str(beside) if beside.exists() else shutil.which("uwsgi")


@dataclass
class Uwsgi:
    proc: subprocess.Popen[bytes]
    log: Path
    base: str
    multiproc: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """Start a real uWSGI serving APP with the given options; stopped after the test."""
    binary = _uwsgi_binary()
    if binary is None:
        pytest.skip("uWSGI is not installed (pip install uwsgi builds it with a C compiler)")
    started: list[Uwsgi] = []

    def start(*options: str) -> Uwsgi:
        (tmp_path / "app.py").write_text(APP)
        port = servers.free_port()
        log = tmp_path / f"uwsgi-{len(started)}.log"
        command = [binary, "--http-socket", f"127.0.0.1:{port}", "--wsgi-file", "app.py"]
        command += ["--virtualenv", sys.prefix, "--need-app", "--disable-logging", *options]
        multiproc = tmp_path / "prom"
        multiproc.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "RUNTIME_GUARD_RECYCLE_MIN_LIFETIME": "0",
            "RUNTIME_GUARD_RECYCLE_JITTER": "0",
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        }
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        server = Uwsgi(proc, log, f"http://127.0.0.1:{port}", multiproc)
        started.append(server)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, server.text()
            try:
                httpx.get(server.base + "/pid", timeout=2)
                return server
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"uWSGI did not come up:\n{server.text()}")

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGINT)
            try:
                server.proc.wait(30)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait(30)


def _samples_by_worker(base: str, rounds: int = 20) -> dict[int, list[int]]:
    """Each worker's sample count, as its /health says, over a few rounds of requests."""
    seen: dict[int, list[int]] = {}
    for _ in range(rounds):
        with httpx.Client(base_url=base) as client:  # a new connection: any worker may answer
            pid = int(client.get("/pid", timeout=5).text)
            health = client.get("/health?detail=1", timeout=5).json()
        seen.setdefault(pid, []).append(int(health["samples"]))
        time.sleep(0.1)
    return seen


def test_missing_options_are_named() -> None:
    """Without threads, or installed in a master that forks without fork hooks, the message
    names the option to add; with them, or installed in a worker, nothing is missing."""
    fine = Setup(threads=True, worker_id=0, forks_workers=True, fork_hooks=True)
    assert missing_options(fine) == []
    no_threads = missing_options(Setup(False, 1, True, True))
    assert len(no_threads) == 1 and "--enable-threads" in no_threads[0]
    [no_hooks] = missing_options(Setup(True, 0, True, False))
    assert FORK_HOOKS in no_hooks and "--lazy-apps" in no_hooks
    assert missing_options(Setup(True, 2, True, False)) == []  # lazy-apps: in the worker
    assert missing_options(Setup(True, 0, False, False)) == []  # one process, no fork


def test_ini_values_of_options_are_read_as_uwsgi_reads_them() -> None:
    """Option values from the command line, an ini file or repeated options read as uWSGI does."""
    opt = {"master": True, "py-call-uwsgi-fork-hooks": "false", "enable-threads": ["0", "1"]}
    assert guard_uwsgi._flag(opt, "master")
    assert not guard_uwsgi._flag(opt, "py-call-uwsgi-fork-hooks")
    assert guard_uwsgi._flag(opt, "enable-threads")
    assert not guard_uwsgi._flag(opt, "lazy-apps")
    assert guard_uwsgi._flag({"lazy-apps": b"true"}, "lazy-apps")


def test_outside_uwsgi_nothing_happens() -> None:
    """Outside uWSGI the module is importable and does nothing."""
    assert guard_uwsgi.running() is None
    guard_uwsgi.shutdown()  # not a worker: logs, sends no signal


@pytest.mark.slow
def test_without_fork_hooks_the_missing_option_is_logged_once(serve: object) -> None:
    """A guard installed in the uWSGI master that forks without Python's fork hooks says which
    option is missing, once; its workers indeed run no sampler, and the master no thread."""
    server = serve("--master", "--processes", "2")  # type: ignore[operator]
    seen = _samples_by_worker(server.base)
    assert server.text().count(FORK_HOOKS) == 1, server.text()
    assert all(len(set(counts)) == 1 for counts in seen.values())  # frozen: no sampler
    # Nor does the master run a thread of the guard that a fork could catch holding a lock.
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    assert "\nThreads:\t1\n" in status, status


@pytest.mark.parametrize(
    "options",
    [
        ("--master", "--processes", "2", "--py-call-uwsgi-fork-hooks"),
        ("--master", "--processes", "2", "--lazy-apps"),
        ("--master", "--processes", "2", "--threads", "2", "--py-call-uwsgi-fork-hooks"),
    ],
    ids=["fork-hooks", "lazy-apps", "threads"],
)
@pytest.mark.slow
def test_with_the_options_every_worker_samples_and_recycles(
    serve: object, options: tuple[str, ...]
) -> None:
    """With the options each worker's sampler runs and health answers; restart_requested
    reloads that one worker gracefully (its in-flight request answered), its Prometheus
    gauges go with it, and uWSGI forks a fresh one, with no warning logged."""
    server = serve(*options)  # type: ignore[operator]
    seen = _samples_by_worker(server.base)
    assert len(seen) == 2, seen
    assert all(counts[-1] > counts[0] for counts in seen.values() if len(counts) > 1)
    answer = httpx.get(server.base + "/restart", timeout=30)
    assert answer.status_code == 200
    recycled = answer.text
    deadline = time.monotonic() + 30
    while "Respawned uWSGI worker" not in server.text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = server.text()
    assert f"recycling uwsgi worker pid {recycled}" in text
    assert "Gracefully killing worker" in text and "Respawned uWSGI worker" in text
    assert recycled not in {str(pid) for pid in _samples_by_worker(server.base, 10)}
    assert "runtime_guard: uWSGI:" not in text
    assert f"gauge_liveall_{recycled}.db" not in {p.name for p in server.multiproc.iterdir()}
