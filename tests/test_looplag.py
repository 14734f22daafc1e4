"""Event-loop lag: a blocking call in an async handler is caught with its line, under a real
uvicorn and in-process; a loop that only awaits never reports; lag as a pressure input."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime_guard import Pressure, signals
from runtime_guard.looplag import QUIET_SAMPLES, LoopMonitor, default_monitor
from runtime_guard.testing import make_guard


def _line(text: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith(f"# {text}"))


@pytest.fixture
def blocked() -> Iterator[list[dict[str, Any]]]:
    got: list[dict[str, Any]] = []

    def receive(sender: Any, **payload: Any) -> None:
        got.append(payload)

    signals.loop_blocked.connect(receive)
    yield got
    signals.loop_blocked.disconnect(receive)


async def blocking_handler() -> None:
    time.sleep(0.8)  # blocks the loop


def test_a_blocking_call_in_a_coroutine_is_named_with_its_line(
    blocked: list[dict[str, Any]],
) -> None:
    """The loop's thread is caught in the blocking call: the signal names that line and
    carries the stack; the lag is a figure of the sample and a health field."""
    guard = make_guard(loop_lag_threshold=0.3)

    async def main() -> None:
        await asyncio.sleep(0.3)  # the monitor's first ticks
        sampler = threading.Timer(0.6, guard.sample)
        sampler.start()
        await blocking_handler()
        sampler.join()

    try:
        asyncio.run(main())
        guard.flush_signals()
        (payload,) = blocked
        assert payload["lag"] >= 0.3
        where = f"{Path(__file__).name}:{_line('blocks the loop')} in blocking_handler"
        assert payload["callback"].endswith(where)
        assert payload["stack"][-1].endswith(where)
        latest = guard.history.latest()
        assert latest is not None and latest.loop_lag is not None and latest.loop_lag >= 0.3
        assert guard.health()["event_loop"]["last_block"]["lag"] >= 0.7
    finally:
        guard.stop()


def test_a_loop_that_only_awaits_is_never_reported(blocked: list[dict[str, Any]]) -> None:
    """Thousands of short tasks and awaits: the lag stays under the threshold."""
    guard = make_guard(loop_lag_threshold=0.3)

    async def main() -> None:
        for _ in range(20):
            await asyncio.gather(*(asyncio.sleep(0.001) for _ in range(200)))
            guard.sample()

    try:
        asyncio.run(main())
        guard.flush_signals()
        assert blocked == []
        assert guard.health()["event_loop"]["lagging"] is False
    finally:
        guard.stop()


def test_lag_holds_the_pressure_up_when_asked_to() -> None:
    """With loop_lag_pressure, a lagging loop puts the guard at that level; the level comes
    back down after the lag has stayed under its threshold for a while."""
    guard = make_guard(loop_lag_threshold=0.2, loop_lag_pressure="high")
    levels: list[Pressure] = []

    async def main() -> None:
        await asyncio.sleep(0.25)
        guard.sample()
        time.sleep(0.5)  # one blocking call
        guard.sample()
        guard.sample()
        levels.append(guard.pressure)
        # The late tick itself lands in the next sample or two; then the quiet ones count.
        for _ in range(QUIET_SAMPLES + 3):
            await asyncio.sleep(0.01)
            guard.sample()
        levels.append(guard.pressure)

    try:
        asyncio.run(main())
        assert levels == [Pressure.HIGH, Pressure.OK]
    finally:
        guard.stop()


def test_an_explicitly_watched_loop_is_measured_without_the_hooks() -> None:
    """watch(loop) measures a loop the guard never saw create a task (uvloop's)."""
    monitor = LoopMonitor(period=0.05, threshold=0.2)

    async def main() -> None:
        monitor.watch(asyncio.get_running_loop())
        await asyncio.sleep(0.2)
        time.sleep(0.4)
        await asyncio.sleep(0.1)

    try:
        asyncio.run(main())
        lag = monitor.take()
        assert lag is not None and lag >= 0.3
        assert monitor.latest_block() is not None
    finally:
        monitor.stop()


def test_the_watchdog_ends_with_the_guard() -> None:
    """Stopping the guard stops the monitor's thread and forgets the loops."""
    guard = make_guard()

    async def main() -> None:
        await asyncio.sleep(0.05)

    asyncio.run(main())
    names = [t.name for t in threading.enumerate()]
    assert "runtime-guard-looplag" in names
    guard.stop()
    time.sleep(0.3)
    assert "runtime-guard-looplag" not in [t.name for t in threading.enumerate()]
    assert default_monitor.watching() == 0


# -- a real uvicorn under load --------------------------------------------------------------

APP = textwrap.dedent(
    """
    import asyncio, time
    import runtime_guard.auto

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/report":
            time.sleep(1.0)  # a blocking call in an async handler
        else:
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(tmp_path: Path, paths: list[str], seconds: float) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "lagapp.py").write_text(APP)
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "RUNTIME_GUARD_INTERVAL": "0.2",
        "RUNTIME_GUARD_LOOP_LAG_THRESHOLD": "0.3",
    }
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "uvicorn", "lagapp:app", "--port", str(port)]
    command += ["--loop", "asyncio", "--log-level", "warning"]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        loadgen = str(Path(__file__).parent / "loadgen.py")
        loader = subprocess.run(
            [sys.executable, loadgen, str(port), str(seconds), *paths],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
        assert "errors 0" in loader.stdout, loader.stdout
        time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(30)
    return log.read_text()


@pytest.mark.slow
def test_uvicorn_names_the_blocking_handler_and_not_the_clean_one(tmp_path: Path) -> None:
    """Under load from another process, the blocking handler's line is reported; the same
    server under the same load on the handler that awaits reports nothing."""
    clean = _serve(tmp_path / "clean", ["/items"] * 8, 6.0)
    assert "event loop ran" not in clean, clean
    lagging = _serve(tmp_path / "lagging", ["/items"] * 8 + ["/report"], 6.0)
    found = re.search(r"event loop ran ([\d.]+) s late, blocked by (\S+)", lagging)
    assert found is not None, lagging
    line = APP.splitlines().index(next(x for x in APP.splitlines() if "blocking call" in x)) + 1
    assert found.group(2).endswith(f"lagapp.py:{line}"), lagging
    assert float(found.group(1)) >= 0.3


def test_the_watchdog_thread_ends_when_no_loop_is_left() -> None:
    """Once the loops it watched are gone, the watchdog thread ends though the guard runs on."""
    import gc

    guard = make_guard()

    async def main() -> None:
        await asyncio.sleep(0.05)

    try:
        asyncio.run(main())
        gc.collect()
        deadline = time.monotonic() + 10
        while "runtime-guard-looplag" in [t.name for t in threading.enumerate()]:
            assert time.monotonic() < deadline, "the watchdog thread kept running"
            time.sleep(0.05)
        asyncio.run(main())  # a new loop: watched again, by a new watchdog
        assert default_monitor.seen >= 0 and guard.component("looplag") is not None
    finally:
        guard.stop()
