"""``runtime-guard status URL``: a running server's health; the exit code is its status."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from runtime_guard.cli._common import err
from runtime_guard.reports.view import fmt_bytes

__all__ = ["command", "format_health", "register"]

_STATUS_CODES = {"ok": 0, "degraded": 1, "critical": 2}
_UNKNOWN = 3


def register(sub: Any) -> None:
    """Add the subcommand to the ``runtime-guard`` parser."""
    status = sub.add_parser(
        "status",
        help="print a running server's health",
        description="Fetch a server's health route (URL, or URL/health when URL has no "
        "path) and print it. Exit status: 0 ok, 1 degraded, 2 critical, 3 unknown.",
    )
    status.add_argument("url", metavar="URL")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("--timeout", type=float, default=5.0, metavar="S")


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


def command(args: argparse.Namespace) -> int:
    """Run ``runtime-guard status``."""
    try:
        url = _health_url(args.url)
    except ValueError as exc:
        err(f"status: {exc}")
        return _UNKNOWN
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            body = response.read(1024 * 1024)
    except urllib.error.HTTPError as exc:  # 503 while critical still carries the health JSON
        body = exc.read(1024 * 1024)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        err(f"status: {url}: unreachable: {reason}")
        return _UNKNOWN
    try:
        health = json.loads(body)
        if not isinstance(health, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        err(f"status: {url}: the answer is not health JSON: {exc}")
        return _UNKNOWN
    if args.json:
        print(json.dumps(health, indent=2))
    else:
        print(f"{url}\n{format_health(health)}")
    return _STATUS_CODES.get(str(health.get("status")), _UNKNOWN)
