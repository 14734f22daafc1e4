"""Diagnosis on demand: Guard.diagnose(), SIGUSR2, the POST route, the marker file."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runtime_guard
from runtime_guard.diagnosis import tracing
from runtime_guard.integrations.wsgi import GuardMiddleware
from runtime_guard.leaks import ondemand
from runtime_guard.probes import RssReader
from runtime_guard.testing import make_guard

# Short windows so a diagnosis takes seconds; the defaults are for production.
_FAST: dict[str, Any] = {
    "interval": 0.1,
    "leak_window": 1.0,
    "leak_warmup": 0.0,
    "leak_diagnosis_window": 1.5,
    "relief": False,
    "track_clients": False,
}

_KEPT: list[bytes] = []


def _keep(n: int = 20) -> None:
    for _ in range(n):
        _KEPT.append(os.urandom(4000))  # kept on demand


def _line_of(marker: str) -> int:
    with open(__file__, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.rstrip().endswith(marker):
                return number
    raise AssertionError(marker)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Threads of other tests would make the window skip tracemalloc on a Python with
    # CPython gh-128679; the switch has its own tests in test_leaks.py.
    monkeypatch.setattr(tracing, "STOP_MAY_CRASH", False)
    yield
    _KEPT.clear()
    ondemand.uninstall_signal()


class _Leaking:
    """Keeps memory from a thread of its own, as a server keeps serving while diagnosed."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="leaking")

    def run(self) -> None:
        while not self.stop.wait(0.01):
            _keep(5)

    def __enter__(self) -> _Leaking:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _wait_for(predicate: Any, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_guard_diagnose_returns_a_report_with_the_line_and_writes_it(tmp_path: Path) -> None:
    """Guard.diagnose() traces a window on the sampler thread and returns the written report."""
    guard = runtime_guard.install(
        **_FAST, memory_limit=RssReader().read() * 10, report_dir=str(tmp_path)
    )
    with _Leaking():
        time.sleep(0.3)
        report = guard.diagnose("asked by the test")
    assert report is not None
    assert report.reason == "asked by the test"
    assert report.tracemalloc_seconds > 0
    top = report.top_sites[0]
    assert (top.filename, top.lineno) == (__file__, _line_of("# kept on demand"))
    assert report.holder is not None
    assert report.holder.path == f"{__name__}._KEPT"
    assert report.path is not None and Path(report.path).parent == tmp_path
    written = json.loads(Path(report.path).read_text())
    assert written["reason"] == "asked by the test"
    assert written["holder"]["path"] == f"{__name__}._KEPT"


def test_diagnose_without_a_sampler_reports_the_growth_since_start() -> None:
    """With no sampler to run a window, diagnose() still reports what grew since start."""
    guard = make_guard(**_FAST)
    try:
        guard.sample()
        _keep(200)
        guard.sample()
        report = guard.diagnose("recycle: worker exits", timeout=0.1)
    finally:
        guard.stop()
    assert report is not None
    assert report.reason == "recycle: worker exits"
    assert "no window" in report.diagnosis
    assert report.top_sites == []


def test_sigusr2_handler_is_installed_only_over_the_default(tmp_path: Path) -> None:
    """The guard takes SIGUSR2 only where nothing handles it, and gives it back on uninstall."""
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        guard = runtime_guard.install(**_FAST, report_dir=str(tmp_path))
        assert signal.getsignal(signal.SIGUSR2) is ondemand._handler
        marker = ondemand.read_marker(os.getpid())
        assert marker == {
            "pid": os.getpid(),
            "signal": "SIGUSR2",
            "report_dir": os.path.abspath(tmp_path),
        }
        runtime_guard.uninstall()
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
        assert ondemand.read_marker(os.getpid()) is None

        def host(signum: int, frame: Any) -> None:
            pass

        signal.signal(signal.SIGUSR2, host)
        guard = runtime_guard.install(**_FAST)
        assert signal.getsignal(signal.SIGUSR2) is host
        assert ondemand.install_signal(guard) is False
        assert ondemand.read_marker(os.getpid()) is None
    finally:
        runtime_guard.uninstall()
        signal.signal(signal.SIGUSR2, previous)


def test_sigusr2_writes_a_report_naming_the_line(tmp_path: Path) -> None:
    """kill -USR2 makes the process write a leak report of its own, with its line."""
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        runtime_guard.install(
            **_FAST, memory_limit=RssReader().read() * 10, report_dir=str(tmp_path)
        )
        with _Leaking():
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGUSR2)
            path = _wait_for(lambda: sorted(tmp_path.glob("runtime-guard-leak-*.json")))[0]
        data = json.loads(path.read_text())
    finally:
        runtime_guard.uninstall()
        signal.signal(signal.SIGUSR2, previous)
    assert data["reason"] == "SIGUSR2"
    assert data["top_sites"][0]["lineno"] == _line_of("# kept on demand")
    assert data["holder"]["path"] == f"{__name__}._KEPT"


def _call(app: GuardMiddleware, method: str, path: str, **environ: str) -> tuple[str, bytes]:
    status: list[str] = []
    body = b"".join(
        app(
            {"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": "10.0.0.7", **environ},
            lambda code, headers: status.append(code),
        )
    )
    return status[0], body


def test_post_route_needs_the_token_and_answers_202_at_once(tmp_path: Path) -> None:
    """POST diagnose_path with the token starts a diagnosis; GET or no token is refused."""

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"app"]

    guard = runtime_guard.install(
        **_FAST, memory_limit=RssReader().read() * 10, report_dir=str(tmp_path)
    )
    app = GuardMiddleware(inner, diagnose_path="/_guard/diagnose", status_token="s3cret")
    assert _call(app, "GET", "/_guard/diagnose")[0].startswith("405")
    assert _call(app, "POST", "/_guard/diagnose")[0].startswith("403")
    wrong = {"HTTP_AUTHORIZATION": "Bearer nope"}
    assert _call(app, "POST", "/_guard/diagnose", **wrong)[0].startswith("403")
    with _Leaking():
        begun = time.monotonic()
        status, body = _call(app, "POST", "/_guard/diagnose", HTTP_AUTHORIZATION="Bearer s3cret")
        assert time.monotonic() - begun < 1.0  # never waits for the window
        assert status.startswith("202")
        answer = json.loads(body)
        assert answer["status"] == "started"
        assert answer["report_dir"] == str(tmp_path)
        path = _wait_for(lambda: sorted(tmp_path.glob("runtime-guard-leak-*.json")))[0]
    assert json.loads(path.read_text())["reason"] == "POST /_guard/diagnose"
    assert guard.config.report_dir == str(tmp_path)
