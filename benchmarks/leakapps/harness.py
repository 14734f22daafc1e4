"""Run an app of :mod:`leakapps` under a real server, load it from another process, judge the
leak reports the guard wrote.

Servers: ``sync`` and ``gthread`` (gunicorn, one worker, the Flask app) and ``uvicorn``
(the FastAPI app). Each server runs in a memory cgroup of its own where this process may
make one (cgroup v1 or v2, a roomy limit), so the guard measures a container as in
production; elsewhere it runs beside this process and says so. The guard writes its reports
to a ``report_dir``; nothing here reaches into the server but HTTP.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from leakapps import HERE, AppSpec, leak_line

__all__ = ["SERVERS", "Outcome", "Server", "judge", "run_case", "run_pair", "serve"]

SERVERS = ("sync", "gthread", "uvicorn")
BENCH_DIR = os.path.dirname(HERE)
_CGROUP_LIMIT = 2 * 1024**3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _own_memory_cgroup() -> str | None:
    """The directory of this process's memory cgroup, when it is writable."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            directory = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"))
        elif controllers == "" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            directory = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
        else:
            continue
        if os.access(directory, os.W_OK):
            return directory
    return None


class Cgroup:
    """A child memory cgroup with a limit, removed on :meth:`remove`; ``path`` None if none."""

    def __init__(self, name: str, limit: int = _CGROUP_LIMIT) -> None:
        self.path: str | None = None
        parent = _own_memory_cgroup()
        if parent is None:
            return
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
            v1 = os.path.exists(os.path.join(path, "memory.limit_in_bytes"))
            limit_file = "memory.limit_in_bytes" if v1 else "memory.max"
            with open(os.path.join(path, limit_file), "w") as f:
                f.write(str(limit))
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            return
        self.path = path

    def add(self, pid: int) -> None:
        if self.path is not None:
            procs = os.path.join(self.path, "cgroup.procs")
            with contextlib.suppress(OSError), open(procs, "w") as f:
                f.write(str(pid))

    def remove(self) -> None:
        if self.path is None:
            return
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


@dataclass
class Server:
    """A running server process and where it writes."""

    spec: AppSpec
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: str
    report_dir: str
    cgroup: Cgroup
    ready_wall: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 30.0, **headers: str) -> tuple[int, bytes]:
        return self._send(urllib.request.Request(self.url + path, headers=headers), timeout)

    def post(self, path: str, timeout: float = 60.0, **headers: str) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=b"", headers=headers)
        return self._send(request, timeout)

    @staticmethod
    def _send(request: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
        """``(status, body)``; 0 when the server does not answer."""
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def worker_pids(self) -> list[int]:
        try:
            out = subprocess.run(
                ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
            ).stdout
        except OSError:
            return []
        pids = [int(p) for p in out.split()]
        return pids or [self.proc.pid]

    def leak_reports(self) -> list[dict[str, Any]]:
        reports = []
        for path in sorted(glob.glob(os.path.join(self.report_dir, "runtime-guard-leak-*.json"))):
            with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as f:
                data = json.load(f)
                data["_path"] = path
                reports.append(data)
        reports.sort(key=lambda r: r.get("detected_at") or 0)
        return reports

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.cgroup.remove()


def serve(
    spec: AppSpec, kind: str, workdir: str, env: Mapping[str, str], guarded: bool = True
) -> Server:
    """Start ``spec``'s app under ``kind``; returns once it answers (or raises with its log)."""
    port = _free_port()
    tag = f"{spec.name}-{kind}-{'g' if guarded else 'u'}-{port}"
    report_dir = os.path.join(workdir, tag, "reports")
    os.makedirs(report_dir, exist_ok=True)
    environment = {
        **os.environ,
        "PYTHONPATH": BENCH_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "LEAKAPP_GUARD": "1" if guarded else "0",
        "LEAKAPP_BIND": f"127.0.0.1:{port}",
        "LEAKAPP_WORKER": "gthread" if kind == "gthread" else "sync",
        "RUNTIME_GUARD_REPORT_DIR": report_dir,
        **env,
    }
    if kind in ("sync", "gthread"):
        target = f"{spec.module}:{spec.flask}"
        command = [sys.executable, "-m", "gunicorn", "-c", os.path.join(HERE, "gunicorn_conf.py")]
        command.append(target)
    elif kind == "uvicorn":
        factory = spec.asgi.endswith("()")
        target = f"{spec.module}:{spec.asgi.removesuffix('()')}"
        command = [sys.executable, "-m", "uvicorn", target, "--port", str(port)]
        command += ["--no-access-log", "--log-level", "warning"]
        if factory:
            command.append("--factory")
    else:
        raise ValueError(f"unknown server {kind!r}")
    cgroup = Cgroup(f"leakapps-{os.getpid()}-{tag}")
    log_path = os.path.join(workdir, tag, "server.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, cwd=BENCH_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    cgroup.add(proc.pid)
    server = Server(spec, kind, port, proc, log_path, report_dir, cgroup)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            cgroup.remove()
            raise RuntimeError(f"{tag} exited:\n{server.log()[-3000:]}")
        if server.get("/items/1", timeout=2)[0] == 200:
            server.ready_wall = time.time()
            return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{tag} did not answer within 60 s:\n{server.log()[-3000:]}")


def _route_form(route: str) -> str:
    """Flask's ``<x>`` and ``<int:x>`` as FastAPI's ``{x}``."""
    out, i = [], 0
    while i < len(route):
        if route[i] == "<":
            end = route.index(">", i)
            out.append("{" + route[i + 1 : end].rsplit(":", maxsplit=1)[-1] + "}")
            i = end + 1
        else:
            out.append(route[i])
            i += 1
    return "".join(out)


@dataclass
class Outcome:
    """What one run of one app under one server showed."""

    app: str
    server: str
    leaks: bool
    reports: list[dict[str, Any]] = field(default_factory=list)
    first_after_warmup: float | None = None
    """Seconds from the end of the guard's warm-up to the first leak report."""
    site: str = ""
    site_right: bool = False
    holder: str = ""
    holder_right: bool = False
    route_rank: int | None = None
    held_bytes: float | None = None
    true_bytes: float | None = None
    load: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def size_error(self) -> float | None:
        if not self.held_bytes or not self.true_bytes:
            return None
        return self.held_bytes / self.true_bytes - 1

    def row(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "server": self.server,
            "reports": len(self.reports),
            "first_s": None if self.first_after_warmup is None else round(self.first_after_warmup),
            "site_right": self.site_right,
            "holder_right": self.holder_right,
            "route_rank": self.route_rank,
            "size_error": None if self.size_error is None else round(self.size_error, 3),
            "site": self.site,
            "holder": self.holder,
            "error": self.error,
        }


def judge(outcome: Outcome, spec: AppSpec, report: dict[str, Any], truth: dict[str, Any]) -> None:
    """Fill ``outcome``'s verdicts from the first leak report and the app's own truth."""
    sites = report.get("top_sites") or []
    if sites:
        top = sites[0]
        outcome.site = f"{os.path.basename(str(top.get('filename')))}:{top.get('lineno')}"
        outcome.site_right = os.path.abspath(str(top.get("filename"))) == spec.file and top.get(
            "lineno"
        ) == leak_line(spec)
    holder = report.get("holder") or {}
    outcome.holder = str(holder.get("path") or " -> ".join(report.get("referrer_chain") or []))
    outcome.holder_right = bool(spec.holder) and outcome.holder.endswith(spec.holder)
    routes = [_route_form(str(r.get("route", ""))) for r in report.get("routes") or []]
    if spec.route in routes:
        outcome.route_rank = routes.index(spec.route) + 1
    size = holder.get("bytes")
    entries = holder.get("entries")
    if isinstance(size, (int, float)) and truth.get("entries"):
        outcome.held_bytes = float(size)
        # The truth is read after the report; scaled back to the entries the report saw.
        if isinstance(entries, int) and entries:
            outcome.true_bytes = truth["bytes"] * entries / truth["entries"]
        else:
            outcome.true_bytes = float(truth["bytes"])


def _start_load(
    spec: AppSpec, urls: list[str], *, rate: float, seconds: float, share: float, out: str
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "leakapps.load", *urls, "--app", spec.name]
    command += ["--rate", str(rate), "--seconds", str(seconds), "--share", str(share)]
    command += ["--out", out, "--records", out + ".records"]
    env = {**os.environ, "PYTHONPATH": BENCH_DIR}
    return subprocess.Popen(command, cwd=BENCH_DIR, env=env)


def _finish_load(
    proc: subprocess.Popen[bytes], out: str, early: bool, seconds: float = 0.0
) -> dict[str, Any]:
    if early and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(seconds + 90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    try:
        with open(out, encoding="utf-8") as f:
            return json.load(f)  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _running(
    spec: AppSpec, kind: str, workdir: str, env: Mapping[str, str], guarded: bool
) -> Iterator[Server]:
    server = serve(spec, kind, workdir, env, guarded)
    try:
        yield server
    finally:
        server.stop()


def run_case(
    spec: AppSpec,
    kind: str,
    workdir: str,
    env: Mapping[str, str],
    *,
    warmup: float,
    rate: float = 20.0,
    share: float = 0.3,
    timeout: float = 180.0,
    stop_on_report: bool = True,
) -> Outcome:
    """Serve ``spec`` under ``kind`` with load until its first leak report (or ``timeout``)."""
    outcome = Outcome(spec.name, kind, spec.leaks)
    try:
        with _running(spec, kind, workdir, env, True) as server:
            out = os.path.join(server.report_dir, "..", "load.json")
            load = _start_load(spec, [server.url], rate=rate, seconds=timeout, share=share, out=out)
            deadline = time.monotonic() + timeout
            reports: list[dict[str, Any]] = []
            while time.monotonic() < deadline and load.poll() is None:
                reports = server.leak_reports()
                if reports and stop_on_report:
                    break
                if server.proc.poll() is not None:
                    outcome.error = "server exited"
                    break
                time.sleep(0.5)
            outcome.load = _finish_load(load, out, early=True)
            time.sleep(1.0)
            reports = server.leak_reports()
            outcome.reports = reports
            truth: dict[str, Any] = {}
            status, body = server.get("/_truth", timeout=120)
            if status == 200:
                truth = json.loads(body)
            if reports:
                first = reports[0]
                detected = first.get("detected_at") or time.time()
                outcome.first_after_warmup = detected - (server.ready_wall + warmup)
                judge(outcome, spec, first, truth)
    except Exception as exc:  # a run that fails is a row that says so, not a lost table
        outcome.error = f"{type(exc).__name__}: {exc}"[:500]
    return outcome


_DIAGNOSIS_KEYS = ("diagnosis", "tracemalloc_seconds", "heap_walk_seconds", "longest_pause_seconds")


def run_pair(
    spec: AppSpec,
    kind: str,
    workdir: str,
    env: Mapping[str, str],
    *,
    rate: float = 20.0,
    share: float = 0.3,
    seconds: float = 170.0,
) -> dict[str, Any]:
    """The same load, request by request, on the app guarded and unguarded: both p99s."""
    with (
        _running(spec, kind, workdir, env, True) as guarded,
        _running(spec, kind, workdir, env, False) as bare,
    ):
        out = os.path.join(guarded.report_dir, "..", "pair-load.json")
        load = _start_load(
            spec, [guarded.url, bare.url], rate=rate, seconds=seconds, share=share, out=out
        )
        summary = _finish_load(load, out, early=False, seconds=seconds)
        reports = guarded.leak_reports()
    targets = summary.get("targets") or [{}, {}]
    return {
        "app": spec.name,
        "server": kind,
        "guarded": targets[0],
        "bare": targets[1],
        "reports": len(reports),
        "diagnosis": [{k: r.get(k) for k in _DIAGNOSIS_KEYS} for r in reports],
    }
