"""``runtime-guard status [URL]``: a running server's health; the exit code is its status.

With a URL it asks the server (``/health?detail=1`` when the URL has no path), which
answers for every live worker of its container when the request may see details (from
loopback, or with the status token). Without one it reads the figures the workers of this
container publish (:mod:`runtime_guard.container`): run in a shell of the container
(``kubectl exec``), it needs no route at all.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from runtime_guard import _container
from runtime_guard.cli._common import err
from runtime_guard.container import read_container
from runtime_guard.integrations._http import STATUS_TOKEN_ENV
from runtime_guard.reports.view import fmt_bytes

__all__ = ["command", "format_health", "format_workers", "register"]

_STATUS_CODES = {"ok": 0, "degraded": 1, "critical": 2}
_UNKNOWN = 3


def register(sub: Any) -> None:
    """Add the subcommand to the ``runtime-guard`` parser."""
    status = sub.add_parser(
        "status",
        help="print a running server's health",
        description="Fetch a server's health route (URL, or URL/health?detail=1 when URL "
        "has no path) and print it, with every live worker of its container. Without URL, "
        "read the figures the workers of this container publish. Exit status: 0 ok, "
        "1 degraded, 2 critical (the worst worker's), 3 unknown.",
    )
    status.add_argument("url", metavar="URL", nargs="?")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("--timeout", type=float, default=5.0, metavar="S")
    status.add_argument(
        "--token",
        metavar="TOKEN",
        help="the status token, for details from a non-loopback address "
        "(default: $RUNTIME_GUARD_STATUS_TOKEN)",
    )
    status.add_argument(
        "--dir",
        metavar="DIR",
        help="without URL: the container's directory (default: as the workers find it)",
    )


def _health_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/health", query=parts.query or "detail=1")
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
    container = health.get("container")
    workers = container.get("workers") if isinstance(container, dict) else None
    if isinstance(workers, list):
        lines.append(format_workers([w for w in workers if isinstance(w, dict)]))
    return "\n".join(lines)


def format_workers(workers: list[dict[str, Any]]) -> str:
    """The container's workers as a table, one line each."""
    lines = [f"workers   {len(workers)} live in this container"]
    lines.append("  pid       status    pressure  usage    rss         leaks  recycling")
    for w in workers:
        fraction = w.get("usage_fraction")
        usage = f"{fraction:.1%}" if isinstance(fraction, (int, float)) else "?"
        state = "stale" if w.get("stale") else str(w.get("status", "?"))
        mark = "*" if w.get("this") else " "
        draining = w.get("draining")
        lines.append(
            f"  {w.get('pid', '?')!s:<8}{mark} {state:<9} {w.get('pressure', '?')!s:<9} "
            f"{usage:<8} {fmt_bytes(_number(w.get('rss_bytes'))):<11} "
            f"{w.get('suspected_leaks', 0)!s:<6} "
            f"{_one_line('draining: ' + str(draining)) if draining else 'no'}"
        )
    return "\n".join(lines)


def _worst(statuses: list[Any]) -> int:
    codes = [_STATUS_CODES.get(str(s), _UNKNOWN) for s in statuses]
    return max(codes) if codes else _UNKNOWN


def _local(args: argparse.Namespace) -> int:
    directory = _container.container_dir(args.dir, create=False)
    if directory is None:
        err("status: no container directory here (give a URL, or --dir)")
        return _UNKNOWN
    view = read_container(directory)
    if args.json:
        print(json.dumps(view.to_dict(), indent=2))
    elif not view.workers:
        print(f"{directory}\nno live worker publishes figures here")
    else:
        print(f"{directory}\n{format_workers(view.workers)}")
    return _worst(["stale" if w.get("stale") else w.get("status") for w in view.workers])


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
    if args.url is None:
        return _local(args)
    try:
        url = _health_url(args.url)
    except ValueError as exc:
        err(f"status: {exc}")
        return _UNKNOWN
    request = urllib.request.Request(url)
    token = args.token or os.environ.get(STATUS_TOKEN_ENV, "").strip()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
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
    container = health.get("container")
    workers = container.get("workers") if isinstance(container, dict) else None
    if isinstance(workers, list) and workers:
        return _worst([w.get("status") for w in workers if isinstance(w, dict)])
    return _STATUS_CODES.get(str(health.get("status")), _UNKNOWN)
