"""``runtime-guard demo``: a leaking web app under the guard, watched live from outside.

The demo copies a small WSGI app (:mod:`runtime_guard.cli.demo_app`) into a working directory,
starts it with ``runtime-guard run`` (so the guard is installed with no code change), and
drives traffic at it over real HTTP on loopback. Its clients talk to a real
``redis-server`` when one is on ``PATH`` (and the ``redis`` package is installed), else to a
small TCP server this process runs on loopback. Everything shown comes from the app's own
answers: ``/health``, and ``/_demo/snapshot`` (the guard's timeline, events and reports).
The guard's timescales (leak windows, warm-up, diagnosis window, duty cycle) are shortened
through ``RUNTIME_GUARD_*`` variables so that an hour's story fits in about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

from runtime_guard._units import format_size
from runtime_guard.cli._common import err
from runtime_guard.config import Config
from runtime_guard.pressure import LEVELS
from runtime_guard.probes import RssReader, find_cgroup_memory

__all__ = ["DEFAULT_DURATION", "command", "register", "run_demo"]

DEFAULT_DURATION = 60.0
"""Seconds of traffic when no duration is given."""

_HEADROOM = 160 * 1024 * 1024
_APP_FILE = "shop.py"
_ORDERS_PER_SECOND = 10.0
_MAX_RECEIPT = 3_000_000


def _demo_options(duration: float) -> dict[str, str]:
    """Guard options for the app: production timescales shrunk to fit the demo."""
    quick = duration < 40
    wanted = {
        "interval": "0.2",
        "leak_window": "0.6" if quick else "1.0",
        "leak_windows": "12",
        "leak_confirm": "3",
        "leak_min_rate": "10MB",
        "leak_warmup": "2",
        "leak_diagnosis_window": "1.5" if quick else "3",
        "leak_repeat_after": "3600",
        "tracemalloc_duty_cycle": "0.5",
        "relief_cooldown": "4",
        "restart_after": "3",
    }
    # Only options this version knows: the demo must run on any combination of parts.
    known = {f.name for f in dataclasses.fields(Config)}
    return {name: value for name, value in wanted.items() if name in known}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Upstream:
    """A loopback TCP server that accepts and holds connections: what leaked sockets reach."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = int(self._server.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name="demo-upstream", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        for conn in self._conns:
            conn.close()
        self._server.close()


class _Redis:
    """A throw-away ``redis-server`` on a free loopback port."""

    def __init__(self, workdir: str) -> None:
        self.port = _free_port()
        self._proc = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", workdir,
                "--maxclients", "4000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.close()
        raise RuntimeError("redis-server did not answer within 10 s")

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _choose_clients(wanted: str) -> str:
    has_redis = shutil.which("redis-server") is not None and (
        importlib.util.find_spec("redis") is not None
    )
    if wanted == "redis" and not has_redis:
        raise RuntimeError("--clients redis needs redis-server on PATH and the redis package")
    if wanted == "auto":
        return "redis" if has_redis else "socket"
    return wanted


@dataclasses.dataclass
class _State:
    """What the monitor has learnt from the app so far."""

    started: float
    usage: int = 0
    limit: int = 0
    fraction: float = 0.0
    pressure: str = "ok"
    peak_usage: int = 0
    peak_level: int = 0
    phase: str = "starting"
    requests: int = 0
    refused: int = 0
    failed: int = 0
    shed: list[str] = dataclasses.field(default_factory=list)
    ever_shed: set[str] = dataclasses.field(default_factory=set)
    restored: set[str] = dataclasses.field(default_factory=set)
    events_seen: int = 0
    leak_began: float | None = None
    leak_at: float | None = None
    leak_site: str = ""
    leak_summary: str = ""
    client_site: str = ""
    reliefs: int = 0
    recycle: bool = False
    snapshot: dict[str, Any] | None = None


class _Display:
    """Prints events as lines; on a terminal also keeps a live status block under them."""

    def __init__(self, out: IO[str], live: bool) -> None:
        self.out = out
        self.live = live
        self._drawn = 0
        self._lock = threading.Lock()

    def _clear(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def line(self, state: _State, text: str) -> None:
        with self._lock:
            if self.live:
                self._clear()
            self.out.write(f"[{time.monotonic() - state.started:5.1f}s] {text}\n")
            if self.live:
                self._draw(state)
            self.out.flush()

    def status(self, state: _State, duration: float) -> None:
        with self._lock:
            if not self.live:
                return
            self._clear()
            self._draw(state, duration)
            self.out.flush()

    def _draw(self, state: _State, duration: float | None = None) -> None:
        width = 36
        filled = min(width, round(state.fraction * width))
        bar = "█" * filled + "░" * (width - filled)
        elapsed = time.monotonic() - state.started
        shed = ", ".join(state.shed) if state.shed else "nothing"
        lines = [
            f"── {state.phase} · {elapsed:5.1f} s" + (f" of ~{duration:.0f} s" if duration else ""),
            f"   usage    {bar} {format_size(state.usage)} of {format_size(state.limit)} "
            f"({state.fraction:.0%})",
            f"   pressure {state.pressure.upper():<9} shed: {shed}",
            f"   requests {state.requests:,} ({state.refused:,} refused with 503)",
        ]
        if state.leak_site:
            lines.append(f"   leak     {os.path.basename(state.leak_site)}")
        if state.client_site:
            lines.append(f"   clients  {state.client_site}")
        # Each line must fit on one row, or moving the cursor back up would miss some.
        columns = max(shutil.get_terminal_size().columns - 1, 20)
        self.out.write("\n".join(line[:columns] for line in lines) + "\n")
        self._drawn = len(lines)

    def finish(self) -> None:
        with self._lock:
            if self.live:
                self._clear()
                self.out.flush()


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


class _Monitor(threading.Thread):
    """Polls the app's snapshot and turns what changed into lines and state."""

    def __init__(self, base: str, state: _State, display: _Display, duration: float) -> None:
        super().__init__(name="demo-monitor", daemon=True)
        self.base = base
        self.state = state
        self.display = display
        self.duration = duration
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):
                self.poll()
            self.display.status(self.state, self.duration)
            self.stopping.wait(0.4)

    def poll(self) -> None:
        code, body = _get(self.base + "/_demo/snapshot", timeout=10)
        if code != 200:
            return
        data = json.loads(body)
        state = self.state
        state.snapshot = data
        health = data.get("health") or {}
        state.usage = int(health.get("usage_bytes") or 0)
        state.limit = int(health.get("limit_bytes") or 0)
        state.fraction = float(health.get("usage_fraction") or 0.0)
        state.pressure = str(health.get("pressure") or "ok")
        state.peak_usage = max(state.peak_usage, state.usage)
        if state.pressure in LEVELS:
            state.peak_level = max(state.peak_level, LEVELS.index(state.pressure))
        state.shed = sorted(str(f) for f in health.get("shed_features") or [])
        events = data.get("events") or []
        for event in events[state.events_seen :]:
            self.on_event(event, data)
        state.events_seen = len(events)
        self.on_reports(data)

    def on_event(self, event: dict[str, Any], data: dict[str, Any]) -> None:
        state, kind, label = self.state, event.get("kind"), str(event.get("label", ""))
        if kind == "pressure":
            text = (
                f"pressure {label} (usage {format_size(state.usage)} of {format_size(state.limit)})"
            )
        elif kind == "leak":
            if state.leak_at is None:
                state.leak_at = time.monotonic()
            text = label
        elif kind == "shed":
            state.ever_shed.add(label.removeprefix("shed "))
            text = f"feature {label}"
        elif kind == "restore":
            state.restored.add(label.removeprefix("restored "))
            text = f"feature {label}"
        elif kind == "relief":
            state.reliefs += 1
            text = label
        elif kind == "recycle":
            state.recycle = True
            text = label
        else:
            text = label
        self.display.line(state, text)

    def on_reports(self, data: dict[str, Any]) -> None:
        state = self.state
        leak = data.get("leak") or {}
        sites = leak.get("top_sites") or []
        if sites and not state.leak_site:
            top = sites[0]
            state.leak_site = (
                f"{top.get('filename')}:{top.get('lineno')} in {top.get('function')} "
                f"(+{format_size(top.get('size_diff') or 0)} in the diagnosis window)"
            )
            rate = leak.get("rate_mb_per_min")
            state.leak_summary = f"{rate:.1f} MB/min" if isinstance(rate, (int, float)) else ""
            self.display.line(state, f"leak diagnosed: the leaking line is {state.leak_site}")
            chain = leak.get("referrer_chain")
            if chain:
                self.display.line(state, "leak held by: " + " -> ".join(map(str, chain)))
        best = _top_client_site(data)
        if best is not None:
            type_name, row = best
            first = not state.client_site
            state.client_site = (
                f"{row.get('unreleased', row.get('count'))} unreleased {type_name} "
                f"created at {row.get('site')}"
            )
            if first:
                self.display.line(state, f"unreleased clients: {state.client_site}")


def _top_client_site(data: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The creation site with most unreleased instances in the guard's unreleased reports."""
    unreleased = data.get("unreleased") or {}
    types = dict(unreleased.get("types") or {})
    candidates = []
    for type_name, entry in types.items():
        for row in (entry or {}).get("sites") or []:
            count = row.get("unreleased", row.get("count")) or 0
            if isinstance(count, int) and count >= 10:
                # A client's own socket is created by the client: name the client first.
                candidates.append((type_name != "socket.socket", count, type_name, row))
    if not candidates:
        return None
    _, _, type_name, row = max(candidates, key=lambda c: (c[0], c[1]))
    return type_name, row


class _Traffic:
    """Sends requests to the app from this thread; counts what came back."""

    def __init__(self, base: str, state: _State) -> None:
        self.base = base
        self.state = state
        self.n = 0
        self.pages = 1000
        """Distinct catalog pages asked for (the app caches up to 150)."""

    def hit(self, path: str, ident: int | None = None, extra: str = "") -> int:
        self.n += 1
        ident = self.n if ident is None else ident
        try:
            code, body = _get(f"{self.base}{path}?id={ident}{extra}", timeout=10)
            if code == 200 and path == "/api/order":
                with contextlib.suppress(ValueError, TypeError):
                    self.state.usage = int(json.loads(body).get("usage", self.state.usage))
        except (OSError, urllib.error.URLError):
            self.state.failed += 1
            return 0
        self.state.requests += 1
        if code == 503:
            self.state.refused += 1
        return code

    def mix(self, orders: bool, size: int = 0) -> None:
        if orders:
            self.hit("/api/order", extra=f"&size={size}" if size else "")
        if not orders or self.n % 2 == 0:
            self.hit("/api/catalog", self.n % self.pages)
        if self.n % 3 == 0:
            self.hit("/api/profile")


def _pace(deadline: float, rate: float) -> None:
    time.sleep(max(0.0, min(1.0 / max(rate, 0.1), deadline - time.monotonic())))


@contextlib.contextmanager
def _app(
    workdir: str, clients: str, port_args: list[str], options: dict[str, str], receipt: int
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start the app under ``runtime-guard run``; yield it and its base URL."""
    app_path = os.path.join(workdir, _APP_FILE)
    from runtime_guard.cli import demo_app as _demo_app

    shutil.copyfile(_demo_app.__file__, app_path)
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONFAULTHANDLER"] = "1"  # a crash of the app leaves its stacks in app.log
    # The app prints its logs to a file the summary points at; the guard's warnings are there.
    log = open(os.path.join(workdir, "app.log"), "w", encoding="utf-8")  # noqa: SIM115
    command = [sys.executable, "-m", "runtime_guard", "run"]
    for name, value in options.items():
        command += ["--" + name.replace("_", "-"), value]
    command += ["--", sys.executable, app_path, "--clients", clients, *port_args]
    command += ["--receipt-bytes", str(receipt)]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        cwd=workdir,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("LISTENING "):
            raise RuntimeError(
                f"the demo app did not start (see {log.name}): {line.strip() or 'no output'}"
            )
        yield proc, f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _missing_parts() -> list[str]:
    parts = {
        "runtime_guard.leaks": "leak detection",
        "runtime_guard.tracking": "client tracking",
        "runtime_guard.shedding": "shedding",
        "runtime_guard.relief": "relief",
        "runtime_guard.integrations.wsgi": "WSGI middleware",
    }
    return [what for name, what in parts.items() if importlib.util.find_spec(name) is None]


def run_demo(
    duration: float | None = None,
    html: str | None = None,
    clients: str = "auto",
    out: IO[str] | None = None,
) -> int:
    """Run the demo; returns 0 when it ran to the end, 1 when the app could not be run."""
    out = out or sys.stdout
    duration = DEFAULT_DURATION if duration is None else duration
    started = time.monotonic()
    state = _State(started=started)
    display = _Display(out, live=out.isatty() and os.environ.get("TERM") != "dumb")
    workdir = tempfile.mkdtemp(prefix="runtime-guard-demo-")
    html = html or os.path.join(workdir, "report.html")
    report_dir = os.path.join(workdir, "reports")
    say = out.write
    say("runtime-guard demo: a small shop web app with two bugs, run under the guard\n")
    say("  bug 1: every order keeps its receipt in a module-level list (a growth leak)\n")
    say("  bug 2: every user profile opens a client and never closes it\n")
    missing = _missing_parts()
    if missing:
        say(f"  not in this installation (skipped): {', '.join(missing)}\n")
    try:
        kind = _choose_clients(clients)
    except RuntimeError as exc:
        say(f"runtime-guard demo: {exc}\n")
        return 1
    budget = RssReader().read() + _HEADROOM
    options = _demo_options(duration)
    options["process_limit"] = str(budget)
    if find_cgroup_memory() is None:
        # Outside a limited container usage is this process's RSS: measure it against the
        # demo's budget. Inside one, usage is the whole container's, so only the process
        # budget is set and the container's real limit stays what it is.
        options["memory_limit"] = str(budget)
    options["report_dir"] = report_dir
    leak_seconds = duration * 0.55
    # Sized for ~8 orders a second, what a busy 2-core machine still serves.
    receipt = max(50_000, int(_HEADROOM * 0.9 / (leak_seconds * 8)))
    servers: list[Any] = []
    try:
        if kind == "redis":
            redis_server = _Redis(workdir)
            servers.append(redis_server)
            port_args = ["--redis-port", str(redis_server.port)]
            where = f"127.0.0.1:{redis_server.port}"
            say(f"  clients: redis.Redis against a real redis-server on {where}\n")
        else:
            upstream = _Upstream()
            servers.append(upstream)
            port_args = ["--upstream-port", str(upstream.port)]
            why = "" if clients == "socket" else " (no redis-server on PATH)"
            say(f"  clients: raw sockets to a loopback TCP server{why}\n")
        say(
            f"  starting the app: runtime-guard run --process-limit {format_size(budget)} "
            f"... -- python {_APP_FILE}\n"
        )
        out.flush()
        with _app(workdir, kind, port_args, options, receipt) as (proc, base):
            say(f"  app listening on {base}; live page at {base}/_guard\n\n")
            _drive(base, state, display, duration, receipt)
            final = state.snapshot
            with contextlib.suppress(OSError, ValueError):
                code, body = _get(base + "/_demo/snapshot", timeout=30)
                if code == 200:
                    final = json.loads(body)
            if proc.poll() is not None:
                say(f"  the app exited early with status {proc.returncode}\n")
    except (RuntimeError, OSError) as exc:
        display.finish()
        say(f"runtime-guard demo: {exc}\n")
        return 1
    finally:
        for server in servers:
            server.close()
    display.finish()
    return _summary(
        out,
        state=state,
        final=final,
        html=html,
        report_dir=report_dir,
        workdir=workdir,
        started=started,
    )


def _drive(base: str, state: _State, display: _Display, duration: float, receipt: int) -> None:
    monitor = _Monitor(base, state, display, duration)
    with contextlib.suppress(Exception):
        monitor.poll()
    monitor.start()
    traffic = _Traffic(base, state)
    t0 = time.monotonic()
    try:
        state.phase = "phase 1/4: warm-up, normal traffic"
        display.line(state, state.phase)
        end = t0 + duration * 0.15
        while time.monotonic() < end:
            traffic.mix(orders=False)
            _pace(end, 15)
        state.phase = "phase 2/4: orders come in, and every one leaks"
        display.line(state, state.phase)
        # Paced to reach CRITICAL about four fifths into the phase, whatever the baseline;
        # on a slow machine the phase runs on (up to twice as long) until it gets there.
        began, orders = time.monotonic(), 0
        state.leak_began = began
        aim = began + duration * 0.45
        end = began + duration * 1.1
        critical_since: float | None = None
        while time.monotonic() < end:
            # Receipts are sized from the order rate this machine really reaches, so a busy
            # machine (fewer orders a second) still gets to the limit in time.
            elapsed = time.monotonic() - began
            achieved = orders / elapsed if elapsed > 2 else _ORDERS_PER_SECOND
            needed = max(0.97 * (state.limit or 1) - state.usage, 0)
            left = max(aim - time.monotonic(), 0.5)
            # Never more than a sixth of what is left in one order: figures lag a little,
            # and overshooting the limit by a lot is what the guard is there to prevent.
            size = int(
                min(max(needed / left / max(achieved, 1.0), 20_000), needed / 6, _MAX_RECEIPT)
            )
            traffic.mix(orders=True, size=size or receipt)
            orders += 1
            if state.pressure == "critical":
                critical_since = critical_since or time.monotonic()
                if state.recycle or time.monotonic() - critical_since > 5:
                    break
            _pace(end, _ORDERS_PER_SECOND)
        state.phase = "phase 3/4: the operator acts"
        display.line(state, state.phase)
        # The operator acts once the guard has said where the leak is and, if it got to
        # CRITICAL, asked for a recycle (or after a while).
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and not (
            state.leak_site and (state.recycle or state.peak_level < 3)
        ):
            traffic.mix(orders=False)
            _pace(deadline, 10)
        display.line(
            state,
            "operator: GET /admin/fix (drops the receipts, as a recycle or a deploy of the fix "
            "would)",
        )
        with contextlib.suppress(OSError):
            _get(base + "/admin/fix", timeout=30)
        state.phase = "phase 4/4: recovery, features come back"
        display.line(state, state.phase)
        traffic.pages = 10  # a quiet tail: the cache cleared under pressure refills a little
        end = max(t0 + duration, time.monotonic() + 3)
        calm_since: float | None = None
        while time.monotonic() < end:
            traffic.mix(orders=False)
            if state.pressure == "ok" and not state.shed:
                calm_since = calm_since or time.monotonic()
                if time.monotonic() - calm_since > 3:
                    break
            else:
                calm_since = None
            _pace(end, 10)
        time.sleep(0.5)
        with contextlib.suppress(Exception):
            monitor.poll()
    finally:
        monitor.stopping.set()
        monitor.join(2)


def _summary(
    out: IO[str],
    *,
    state: _State,
    final: dict[str, Any] | None,
    html: str,
    report_dir: str,
    workdir: str,
    started: float,
) -> int:
    from runtime_guard.reports.html import render_html

    say = out.write
    size = 0
    page_error = ""
    if final is not None:
        try:
            page = render_html(final)
            with open(html, "w", encoding="utf-8") as f:
                f.write(page)
            size = len(page.encode())
        except (OSError, ValueError) as exc:
            page_error = str(exc)
    leak = (final or {}).get("leak") or {}
    say("\nSummary\n")
    rows = [
        ("requests", f"{state.requests:,} ({state.refused:,} refused with 503 while critical, "
                     f"{state.failed} failed)"),
        ("peak usage", f"{format_size(state.peak_usage)} of {format_size(state.limit)} budget"),
        ("worst pressure", LEVELS[state.peak_level].upper()
         + ("; back to OK" if state.pressure == "ok" else f"; now {state.pressure.upper()}")),
        ("leak", f"diagnosed at {state.leak_site}" if state.leak_site else (
            "suspected, diagnosis pending" if leak else "not detected")),
    ]  # fmt: skip
    if state.leak_summary:
        rows.append(("leak rate", f"{state.leak_summary} when diagnosed"))
    if state.leak_at is not None and state.leak_began is not None:
        found = state.leak_at - state.leak_began
        rows.append(("leak reported", f"{found:.1f} s after the leaking orders began"))
    rows.append(("unreleased clients", state.client_site or "none reported"))
    rows.append(("features shed", ", ".join(sorted(state.ever_shed)) or "none"))
    rows.append(("features restored", ", ".join(sorted(state.restored)) or "none"))
    rows.append(("relief runs", str(state.reliefs)))
    rows.append(("recycle requested", "yes" if state.recycle else "no"))
    rows.append(("run time", f"{time.monotonic() - started:.1f} s"))
    if size:
        rows.append(("HTML report", f"{html} ({format_size(size)})"))
    else:
        rows.append(("HTML report", f"not written: {page_error or 'no snapshot from the app'}"))
    rows.append(("JSON reports", f"{report_dir} (runtime-guard report FILE.json)"))
    rows.append(("app log", os.path.join(workdir, "app.log")))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        say(f"  {key:<{width}}  {value}\n")
    out.flush()
    return 0


def register(sub: Any) -> None:
    """Add the subcommand to the ``runtime-guard`` parser."""
    demo = sub.add_parser(
        "demo",
        help="watch the guard catch a leaking web app (about a minute)",
        description="Start a small leaking web app under the guard, drive traffic at it and "
        "show live what the guard sees; ends with a summary and an HTML report.",
    )
    length = demo.add_mutually_exclusive_group()
    length.add_argument(
        "--duration", type=float, default=None, metavar="S", help="seconds of traffic (>= 10)"
    )
    length.add_argument("--quick", action="store_true", help="a short run, for CI")
    demo.add_argument("--html", metavar="OUT.html", help="where to write the HTML report")
    demo.add_argument(
        "--clients",
        choices=("auto", "redis", "socket"),
        default="auto",
        help="leaked clients: redis (needs redis-server on PATH) or raw sockets; auto picks",
    )


def command(args: argparse.Namespace) -> int:
    """Run ``runtime-guard demo``."""
    if args.duration is not None and args.duration < 10:
        err("demo: --duration must be at least 10 seconds")
        return 2
    duration = 20.0 if args.quick else args.duration
    return run_demo(duration=duration, html=args.html, clients=args.clients)
