"""One scenario run: a server in a memory cgroup, paced load from outside, what came of it.

Shared by ``benchmarks/bench_service.py`` (the long runs and the table) and the end-to-end
tests (short runs). The cgroup comes from the caller (``tests/containers.py`` makes one), as
anything with ``popen(args, env=, cwd=, stdout=, stderr=)``, ``oom_kills()``, ``usage()``
and ``limit``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024

MODES = ("none", "stock", "guard")
"""No mitigation, the server's own one, the guard."""

# Where each leak shape leaks in svc_work.py (text of the lines that count as naming it:
# where the memory is allocated or kept), and the client's creation.
LEAK_LINES = {
    "cache": ("_responses[key] = ",),
    "objects": ("_events.append(", "self.fields = {", "self.tags = ["),
    "buffers": ("_buffers.append(",),
    "clients": ("client = redis.Redis.from_url(",),
}


class Cgroup(Protocol):
    """What a run needs of its container (``tests/containers.Container``)."""

    limit: int
    path: str

    def popen(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdout: Any = None,
        stderr: Any = None,
    ) -> subprocess.Popen[bytes]: ...

    def oom_kills(self) -> int: ...

    def usage(self) -> int: ...


@dataclass(frozen=True)
class Scenario:
    """A server, an app's leak and a load, as a user would meet them."""

    name: str
    server: str
    """``gunicorn`` (sync workers), ``gthread``, ``uvicorn`` or ``celery`` (prefork)."""
    leak: str = ""
    """Comma-separated leak shapes of ``svc_work`` (empty: a clean app)."""
    leak_kb: float = 50.0
    rate: float = 40.0
    seconds: float = 120.0
    limit_mib: int = 200
    workers: int = 2
    spike_at: float | None = None
    """Seconds into the load at which one call allocates 50 MiB once."""
    stock: Mapping[str, str] = field(default_factory=dict)
    """Environment of the stock mitigation (its settings)."""
    model_mb: int = 0
    """Megabytes each worker loads at start and keeps (``SVC_MODEL_MB``)."""

    @property
    def leaks(self) -> list[str]:
        return [shape for shape in self.leak.split(",") if shape]


@dataclass
class Result:
    """What one run of one scenario in one mode gave."""

    scenario: str
    mode: str
    calls: int = 0
    ok: int = 0
    refused: int = 0
    failed: int = 0
    oom_kills: int = 0
    recycles: int = 0
    p99: float | None = None
    peak_usage: int = 0
    limit: int = 0
    reports: int = 0
    recycle_reports: int = 0
    named: dict[str, bool] = field(default_factory=dict)
    """Per leak shape: whether a report named its line (the client site for ``clients``)."""
    errors: dict[str, int] = field(default_factory=dict)
    served: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Per pid that answered: when it answered first and last (seconds into the load)."""
    log: str = ""

    @property
    def ok_share(self) -> float:
        return self.ok / self.calls if self.calls else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("log", "served")}
        data["ok_share"] = self.ok_share
        return data


def leak_line(text: str) -> int:
    """Line number of ``text`` in svc_work.py."""
    for number, line in enumerate((HERE / "svc_work.py").read_text().splitlines(), 1):
        if text in line:
            return number
    raise LookupError(text)


def _command(scenario: Scenario, mode: str, port: int) -> list[str]:
    python = sys.executable
    if scenario.server in ("gunicorn", "gthread"):
        return [python, "-m", "gunicorn", "-c", str(HERE / "svc_gunicorn.py"), "svc_flask:app"]
    if scenario.server == "uvicorn":
        command = [python, "-m", "uvicorn", "svc_fastapi:app", "--port", str(port)]
        command += ["--workers", str(scenario.workers), "--no-access-log", "--http", "h11"]
        if mode == "stock":
            command += ["--limit-max-requests", scenario.stock.get("max_requests", "400")]
        return command
    if scenario.server == "celery":
        command = [python, "-m", "celery", "-A", "svc_celery", "worker", "-l", "info"]
        return [*command, "--pool", "prefork", "-c", str(scenario.workers), "--without-gossip"]
    raise ValueError(f"unknown server {scenario.server!r}")


def _environment(
    scenario: Scenario,
    mode: str,
    port: int,
    redis_url: str,
    *,
    reports: Path,
    extra: Mapping[str, str],
) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RUNTIME_GUARD_", "SVC_", "PROMETHEUS_"))
    }
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        SVC_MODE=mode,
        SVC_LEAK=scenario.leak,
        SVC_LEAK_KB=str(scenario.leak_kb),
        SVC_REDIS_URL=redis_url,
        SVC_BIND=f"127.0.0.1:{port}",
        SVC_WORKERS=str(scenario.workers),
        SVC_WORKER_CLASS="gthread" if scenario.server == "gthread" else "sync",
        SVC_MODEL_MB=str(scenario.model_mb),
    )
    if mode == "stock":
        env.update({f"SVC_{k.upper()}": v for k, v in scenario.stock.items()})
    if mode == "guard":
        env["RUNTIME_GUARD_REPORT_DIR"] = str(reports)
        # The workers' shared directory of this run alone: a run never sees the figures,
        # locks or measured drains a run before it left in the same cgroup.
        env["RUNTIME_GUARD_CONTAINER_DIR"] = str(reports.parent / "container")
    env.update(extra)
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _workers(main: int) -> set[int]:
    try:
        children = psutil.Process(main).children()
    except psutil.Error:
        return set()
    found = set()
    for child in children:
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(child.cmdline()):
                found.add(child.pid)
    return found


def _ready(scenario: Scenario, proc: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    if len(_workers(proc.pid)) < scenario.workers:
        return False
    if scenario.server == "celery":
        return " ready." in log.read_text(errors="replace")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/ping", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class _Watch:
    """Polls the server's worker pids and the cgroup's usage while the load runs."""

    def __init__(self, main: int, cgroup: Cgroup) -> None:
        self.main = main
        self.cgroup = cgroup
        self.seen = _workers(main)
        self.initial = len(self.seen)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.seen |= _workers(self.main)
            with contextlib.suppress(OSError, ValueError):
                self.peak = max(self.peak, self.cgroup.usage())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return len(self.seen) - self.initial


@contextlib.contextmanager
def serving(
    scenario: Scenario,
    mode: str,
    cgroup: Cgroup,
    redis_url: str,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """Start the scenario's server inside ``cgroup``; yields ``(process, port, log)``."""
    port = _free_port()
    reports = workdir / "reports"
    log = workdir / "server.log"
    environment = _environment(scenario, mode, port, redis_url, reports=reports, extra=env or {})
    with open(log, "wb") as out:
        proc = cgroup.popen(
            _command(scenario, mode, port), env=environment, cwd=str(HERE), stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 90
        while not _ready(scenario, proc, port, log):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{scenario.server} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if scenario.server != "celery" else signal.SIGQUIT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def drive(
    scenario: Scenario, port_or_broker: str, seconds: float, out: Path
) -> list[dict[str, Any]]:
    """Run the load generator in its own process and return its records."""
    kind = "celery" if scenario.server == "celery" else "http"
    command = [sys.executable, str(HERE / "load.py"), kind, port_or_broker]
    command += [str(scenario.rate), str(seconds), str(out)]
    if scenario.spike_at is not None:
        command += ["--spike-at", str(scenario.spike_at)]
    subprocess.run(command, check=True, timeout=seconds + 120, cwd=str(HERE))
    records: list[dict[str, Any]] = json.loads(out.read_text())
    return records


def run(
    scenario: Scenario,
    mode: str,
    cgroup: Cgroup,
    redis_url: str,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    seconds: float | None = None,
) -> Result:
    """Serve ``scenario`` in ``mode`` inside ``cgroup`` under its load; what came of it."""
    workdir.mkdir(parents=True, exist_ok=True)
    seconds = scenario.seconds if seconds is None else seconds
    result = Result(scenario.name, mode, limit=cgroup.limit)
    with serving(scenario, mode, cgroup, redis_url, workdir, env=env) as (proc, port, log):
        watch = _Watch(proc.pid, cgroup)
        target = redis_url if scenario.server == "celery" else str(port)
        try:
            records = drive(scenario, target, seconds, workdir / "load.json")
        finally:
            result.recycles = watch.stop()
            result.peak_usage = watch.peak
    result.oom_kills = cgroup.oom_kills()
    result.log = log.read_text(errors="replace")
    tally(result, records)
    read_reports(result, scenario, workdir / "reports")
    return result


def tally(result: Result, records: list[dict[str, Any]]) -> None:
    """Count the calls' outcomes and the p99 latency of those answered."""
    latencies = []
    for record in records:
        result.calls += 1
        status = record.get("status")
        if status is not None and "lat" in record:
            latencies.append(record["lat"])
        pid = record.get("pid")
        if isinstance(pid, int):
            first, _ = result.served.get(pid, (record["t"], record["t"]))
            result.served[pid] = (first, record["t"])
        if status is not None and 200 <= status < 300 and "error" not in record:
            result.ok += 1
        elif status == 503:
            result.refused += 1
        else:
            result.failed += 1
            reason = record.get("error") or f"status {status}"
            result.errors[reason] = result.errors.get(reason, 0) + 1
    if latencies:
        latencies.sort()
        result.p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)]


def _places(data: Any, found: set[tuple[str, int]]) -> None:
    """Every ``(file name, line)`` a report mentions, in fields or in text."""
    if isinstance(data, dict):
        name = data.get("filename") or data.get("file")
        line = data.get("lineno") or data.get("line")
        if isinstance(name, str) and isinstance(line, int):
            found.add((os.path.basename(name), line))
        for value in data.values():
            _places(value, found)
    elif isinstance(data, list):
        for value in data:
            _places(value, found)
    elif isinstance(data, str):
        for name, line in re.findall(r"([\w.-]+\.py):(\d+)", data):
            found.add((name, int(line)))


def read_reports(result: Result, scenario: Scenario, directory: Path) -> None:
    """Whether the reports the guard wrote name each leak's line (and the client site)."""
    found: set[tuple[str, int]] = set()
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        result.reports += 1
        if data.get("kind") == "recycle":
            result.recycle_reports += 1
        _places(data, found)
    for shape in scenario.leaks:
        lines = {("svc_work.py", leak_line(text)) for text in LEAK_LINES[shape]}
        result.named[shape] = bool(lines & found)
