"""Writing reports to ``report_dir``: owner-only files, names the guard builds, a cap on count."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import threading
import time
from typing import Any

from runtime_guard._version import __version__

__all__ = ["MAX_REPORT_BYTES", "MAX_REPORT_FILES", "write_report"]

_log = logging.getLogger("runtime_guard")

MAX_REPORT_FILES = 50
"""Reports kept per kind in ``report_dir``; the oldest of the guard's own files go first."""

MAX_REPORT_BYTES = 2 * 1024 * 1024
"""A report larger than this as JSON is not written (reports are capped before that)."""

_KINDS = frozenset({"leak", "unreleased", "relief", "pressure", "episode", "recycle"})
_counter = itertools.count()
_lock = threading.Lock()


def write_report(report_dir: str, kind: str, data: dict[str, Any]) -> str | None:
    """Write ``data`` as JSON to ``report_dir``; return the path, or None if not written.

    The file name is ``runtime-guard-<kind>-<time>-<pid>-<n>.json``, built here from a fixed
    set of kinds: nothing from the report (feature, type or site names) reaches a path. The
    file is created with mode 0600 and never replaces an existing file.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    try:
        payload = json.dumps(
            {"kind": kind, "runtime_guard_version": __version__, **data}, indent=1, default=str
        )
    except (TypeError, ValueError):
        _log.exception("runtime_guard: %s report is not JSON-ready; not written", kind)
        return None
    if len(payload) > MAX_REPORT_BYTES:
        _log.warning("runtime_guard: %s report of %d bytes not written", kind, len(payload))
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = f"runtime-guard-{kind}-{stamp}-{os.getpid()}-{next(_counter)}.json"
    with _lock:
        try:
            os.makedirs(report_dir, mode=0o700, exist_ok=True)
            path = os.path.join(report_dir, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
            _prune(report_dir, kind)
            return path
        except OSError:
            _log.exception("runtime_guard: could not write a %s report to %s", kind, report_dir)
            return None


def _prune(report_dir: str, kind: str) -> None:
    prefix = f"runtime-guard-{kind}-"
    own = sorted(
        (entry for entry in os.scandir(report_dir) if entry.name.startswith(prefix)),
        key=lambda entry: entry.stat().st_mtime_ns,
    )
    for entry in own[: max(len(own) - MAX_REPORT_FILES, 0)]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
