"""``runtime-guard report FILE.json [--html OUT.html]``: a saved report as text or HTML."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from runtime_guard.cli._common import err
from runtime_guard.reports.view import ReportError, fmt_bytes, read_view

__all__ = ["MAX_REPORT_FILE", "command", "load_report", "register"]

MAX_REPORT_FILE = 64 * 1024 * 1024
"""Larger files are refused before reading: reports the guard writes are capped at 2 MB."""


def register(sub: Any) -> None:
    """Add the subcommand to the ``runtime-guard`` parser."""
    report = sub.add_parser(
        "report",
        help="render a saved report as text or HTML",
        description="Render a report written to report_dir (leak, unreleased, episode).",
    )
    report.add_argument("file", metavar="FILE.json")
    report.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML page")


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


def command(args: argparse.Namespace) -> int:
    """Run ``runtime-guard report``."""
    from runtime_guard.reports.html import render_view
    from runtime_guard.reports.text import render_view_text

    try:
        view = read_view(load_report(args.file))
    except (ReportError, RecursionError) as exc:
        err(f"report: {args.file}: {exc}")
        return 2
    if args.html is None:
        sys.stdout.write(render_view_text(view))
        return 0
    page = render_view(view)
    try:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as exc:
        err(f"report: cannot write {args.html}: {exc.strerror or exc}")
        return 2
    print(f"wrote {args.html} ({fmt_bytes(len(page.encode()))})")
    return 0
