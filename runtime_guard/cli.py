"""The ``runtime-guard`` command (also ``python -m runtime_guard``).

``run [options] -- CMD...``
    Run a Python program with the guard installed at its start-up, no code change.
``demo [--quick | --duration S]``
    Start a leaking web app under the guard and watch it live.
``report FILE.json [--html OUT.html]``
    Render a saved report as text, or as a self-contained HTML page.
``status URL``
    Print a running server's health; exit 0 ok, 1 degraded, 2 critical, 3 unknown.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from runtime_guard._reportview import ReportError, fmt_bytes, read_view
from runtime_guard._version import __version__
from runtime_guard.config import Config, ConfigError, env_name

__all__ = ["build_parser", "format_health", "load_report", "main"]

MAX_REPORT_FILE = 64 * 1024 * 1024
"""Larger files are refused before reading: reports the guard writes are capped at 2 MB."""

_STATUS_CODES = {"ok": 0, "degraded": 1, "critical": 2}
_UNKNOWN = 3


def _add_run(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run a program with the guard installed",
        description="Run CMD with the guard installed at its start-up (through a "
        "sitecustomize on a temporary path; an existing sitecustomize still runs). "
        "Options become RUNTIME_GUARD_* variables; the exit code is CMD's.",
        usage="runtime-guard run [options] -- CMD [ARG...]",
    )
    for name, default, doc in Config.describe():
        run.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="VALUE",
            help=f"{doc} ({env_name(name)}; default {default})".replace("%", "%%"),
        )
    run.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="runtime-guard", description="In-process memory guard for Python servers."
    )
    parser.add_argument("--version", action="version", version=f"runtime-guard {__version__}")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    _add_run(sub)
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
    report = sub.add_parser(
        "report",
        help="render a saved report as text or HTML",
        description="Render a report written to report_dir (leak, unreleased, episode).",
    )
    report.add_argument("file", metavar="FILE.json")
    report.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML page")
    status = sub.add_parser(
        "status",
        help="print a running server's health",
        description="Fetch a server's health route (URL, or URL/health when URL has no "
        "path) and print it. Exit status: 0 ok, 1 degraded, 2 critical, 3 unknown.",
    )
    status.add_argument("url", metavar="URL")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("--timeout", type=float, default=5.0, metavar="S")
    return parser


def _err(message: str) -> None:
    sys.stderr.write(f"runtime-guard: {message}\n")


def _cmd_run(args: argparse.Namespace) -> int:
    from runtime_guard._run import run_command

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _err("run: no command given; usage: runtime-guard run [options] -- CMD [ARG...]")
        return 2
    options = {
        name: getattr(args, name)
        for name, _, _ in Config.describe()
        if getattr(args, name) is not None
    }
    try:
        Config.from_options(options)  # names the flag, not the variable, in the error
    except ConfigError as exc:
        name, sep, rest = str(exc).partition("=")
        _err(f"run: --{name.replace('_', '-')}{sep}{rest}")
        return 2
    try:
        return run_command(command, options)
    except ConfigError as exc:
        _err(f"run: {exc}")
        return 2
    except OSError as exc:
        _err(f"run: cannot start {command[0]!r}: {exc.strerror or exc}")
        return 127


def load_report(path: str) -> Any:
    """Read a report file as JSON; raises ``ReportError`` saying what is wrong with it."""
    try:
        size = os.stat(path).st_size
        if size > MAX_REPORT_FILE:
            raise ReportError(f"{size:,} bytes is too large for a report")
        with open(path, "rb") as f:
            raw = f.read(MAX_REPORT_FILE + 1)
        text = raw.decode("utf-8")
        return json.loads(text)
    except OSError as exc:
        raise ReportError(exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ReportError(f"not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise ReportError("JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ReportError(f"not a readable JSON report: {exc}") from None


def _cmd_report(args: argparse.Namespace) -> int:
    from runtime_guard.report_html import render_view
    from runtime_guard.report_text import render_view_text

    try:
        view = read_view(load_report(args.file))
    except (ReportError, RecursionError) as exc:
        _err(f"report: {args.file}: {exc}")
        return 2
    if args.html is None:
        sys.stdout.write(render_view_text(view))
        return 0
    page = render_view(view)
    try:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as exc:
        _err(f"report: cannot write {args.html}: {exc.strerror or exc}")
        return 2
    print(f"wrote {args.html} ({fmt_bytes(len(page.encode()))})")
    return 0


def _health_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/health")
    return urllib.parse.urlunsplit(parts)


def format_health(health: dict[str, Any]) -> str:
    """A server's health dict as a few readable lines."""
    fraction = health.get("usage_fraction")
    shown = f" ({fraction:.1%})" if isinstance(fraction, (int, float)) else ""
    lines = [
        f"status    {health.get('status', '?')}",
        f"pressure  {health.get('pressure', '?')}",
        f"usage     {fmt_bytes(_number(health.get('usage_bytes')))} of "
        f"{fmt_bytes(_number(health.get('limit_bytes')))}{shown}",
        f"rss       {fmt_bytes(_number(health.get('rss_bytes')))}",
    ]
    uptime = _number(health.get("uptime_seconds"))
    if uptime is not None:
        lines.append(f"uptime    {uptime:.0f} s")
    shed = health.get("shed_features") or []
    lines.append(f"shed      {', '.join(map(str, shed)) if shed else 'nothing'}")
    leaks = health.get("suspected_leaks") or []
    if isinstance(leaks, int):  # the public body carries a count, ``detail`` the reports
        lines.append(f"leaks     {leaks} suspected")
    for leak in leaks if isinstance(leaks, list) else []:
        lines.append(f"leak      {_one_line(leak)}")
    objects = health.get("unreleased_objects") or {}
    if isinstance(objects, dict):
        for name, counts in objects.items():
            lines.append(f"objects   {name}: {_one_line(counts)}")
    return "\n".join(lines)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _one_line(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if not isinstance(v, (dict, list)))[
            :200
        ]
    return str(value)[:200]


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        url = _health_url(args.url)
    except ValueError as exc:
        _err(f"status: {exc}")
        return _UNKNOWN
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            body = response.read(1024 * 1024)
    except urllib.error.HTTPError as exc:  # 503 while critical still carries the health JSON
        body = exc.read(1024 * 1024)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        _err(f"status: {url}: unreachable: {reason}")
        return _UNKNOWN
    try:
        health = json.loads(body)
        if not isinstance(health, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        _err(f"status: {url}: the answer is not health JSON: {exc}")
        return _UNKNOWN
    if args.json:
        print(json.dumps(health, indent=2))
    else:
        print(f"{url}\n{format_health(health)}")
    return _STATUS_CODES.get(str(health.get("status")), _UNKNOWN)


def _cmd_demo(args: argparse.Namespace) -> int:
    from runtime_guard._demo import run_demo

    if args.duration is not None and args.duration < 10:
        _err("demo: --duration must be at least 10 seconds")
        return 2
    duration = 20.0 if args.quick else args.duration
    return run_demo(duration=duration, html=args.html, clients=args.clients)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    for stream in (sys.stdout, sys.stderr):
        # Charts and paths may hold characters a non-UTF-8 terminal cannot show: replace
        # them rather than fail half-way through a report.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command_name is None:
        parser.print_help()
        return 2
    handlers = {
        "run": _cmd_run,
        "demo": _cmd_demo,
        "report": _cmd_report,
        "status": _cmd_status,
    }
    return handlers[args.command_name](args)


if __name__ == "__main__":
    sys.exit(main())
