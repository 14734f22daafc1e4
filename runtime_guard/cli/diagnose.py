"""``runtime-guard diagnose PID``: make a running process write a leak report, and show it.

No debugger and no ``ptrace`` (which memray attach and py-spy need, and which Kubernetes
pods usually lack): the process's guard handles ``SIGUSR2`` with a diagnosis and writes the
report to its ``report_dir``. The command signals only a process whose guard left its marker
(see :mod:`runtime_guard.leaks.ondemand`) and whose kernel record says the signal is
caught right now, so it never kills a process nor re-execs a gunicorn master with it.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
import time
from typing import Any

from runtime_guard.cli._common import err

__all__ = ["command", "register", "signal_caught"]

_OK, _FAILED, _REFUSED = 0, 1, 2


def register(sub: Any) -> None:
    """Add the subcommand to the ``runtime-guard`` parser."""
    diagnose = sub.add_parser(
        "diagnose",
        help="make a running process write a leak report now",
        description="Signal PID's guard (SIGUSR2) to diagnose its memory growth now, wait for "
        "the report it writes to its report_dir, and print it. Exit status: 0 report "
        "shown, 1 no report in time, 2 the process cannot be asked.",
    )
    diagnose.add_argument("pid", type=int, metavar="PID")
    diagnose.add_argument("--timeout", type=float, default=60.0, metavar="S")
    diagnose.add_argument("--html", metavar="OUT.html", help="also write the report as HTML")


def signal_caught(pid: int, signum: int) -> bool:
    """True when process ``pid`` catches ``signum`` right now (``/proc/PID/status``)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        return False
    return False


def _started_after(pid: int, mtime: float) -> bool:
    """True when ``pid`` started after ``mtime``: a marker left by an earlier process."""
    try:
        return os.stat(f"/proc/{pid}").st_mtime > mtime + 1.0
    except OSError:
        return True


def command(args: argparse.Namespace) -> int:
    """Run ``runtime-guard diagnose``."""
    from runtime_guard.leaks.ondemand import marker_path, read_marker

    pid: int = args.pid
    marker = read_marker(pid)
    if marker is None or _started_after(pid, os.stat(marker_path(pid)).st_mtime):
        err(
            f"diagnose: process {pid} has no runtime_guard diagnosis signal (no guard, "
            "diagnose_signal='off', or a host's own handler; under gunicorn the hooks "
            "need post_worker_init)"
        )
        return _REFUSED
    signum = getattr(signal, str(marker.get("signal")), None)
    if signum is None or not signal_caught(pid, signum):
        err(f"diagnose: process {pid} does not catch {marker.get('signal')} now; not sent")
        return _REFUSED
    report_dir = marker.get("report_dir")
    pattern = os.path.join(report_dir, f"runtime-guard-leak-*-{pid}-*.json") if report_dir else None
    before = set(glob.glob(pattern)) if pattern else set()
    try:
        os.kill(pid, signum)
    except OSError as exc:
        err(f"diagnose: cannot signal process {pid}: {exc.strerror or exc}")
        return _REFUSED
    if pattern is None:
        print(f"sent {marker.get('signal')} to {pid}; with no report_dir, the report is in its log")
        return _OK
    print(f"sent {marker.get('signal')} to {pid}; waiting for its report in {report_dir} ...")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        new = sorted(set(glob.glob(pattern)) - before, key=os.path.getmtime)
        if new:
            return _show(new[-1], args.html)
        time.sleep(0.25)
    err(f"diagnose: no report from {pid} within {args.timeout:.0f} s")
    return _FAILED


def _show(path: str, html: str | None) -> int:
    from runtime_guard.cli.report import load_report
    from runtime_guard.reports.html import render_view
    from runtime_guard.reports.text import render_view_text
    from runtime_guard.reports.view import ReportError, read_view

    # The file appears before its last byte is written: read until it parses.
    for attempt in range(20):
        try:
            view = read_view(load_report(path))
            break
        except ReportError as exc:
            if attempt == 19:
                err(f"diagnose: {path}: {exc}")
                return _FAILED
            time.sleep(0.1)
    sys.stdout.write(render_view_text(view))
    print(f"report: {path}")
    if html:
        try:
            with open(html, "w", encoding="utf-8") as f:
                f.write(render_view(view))
        except OSError as exc:
            err(f"diagnose: cannot write {html}: {exc.strerror or exc}")
            return _FAILED
        print(f"wrote {html}")
    return _OK
