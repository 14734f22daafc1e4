"""Open file descriptors by kind, and their owners where the tracking registry knows them.

Read on demand (a report), never per sample: listing ``/proc/self/fd`` and reading each
link costs a few microseconds per descriptor. An owner is a tracked object (a socket, a
psycopg connection...) whose ``fileno()`` is the descriptor: its type and creation site.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from runtime_guard.tracking.registry import TOP_SITES, TrackingRegistry, default_registry
from runtime_guard.tracking.sites import Site

__all__ = ["MAX_LISTED", "describe_fds", "fd_kind"]

MAX_LISTED = 100_000
"""Descriptors read at most per report, so a runaway process still gets a bounded one."""


def fd_kind(target: str) -> str:
    """``socket``, ``pipe``, ``file``, ``anon_inode`` or ``other`` for a link target."""
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("anon_inode:"):
        return "anon_inode"
    if target.startswith("/"):
        return "file"
    return "other"


def _owners(registry: TrackingRegistry) -> dict[int, tuple[str, Site]]:
    owners: dict[int, tuple[str, Site]] = {}
    for rec in list(registry.store.records.values()):
        obj = rec()
        fileno = getattr(obj, "fileno", None)
        if not callable(fileno):
            continue
        with contextlib.suppress(Exception):  # closed, or not a descriptor at all
            fd = fileno()
            if isinstance(fd, int) and fd >= 0:
                owners[fd] = (rec.entry.name, rec.site)
    return owners


def describe_fds(
    directory: str = "/proc/self/fd", registry: TrackingRegistry | None = None
) -> dict[str, Any]:
    """``{"count", "kinds": {kind: n}, "owners": [rows], "files": [paths]}`` now.

    ``owners`` groups the descriptors held by tracked objects by type and creation site,
    most first; ``files`` lists the most frequent regular-file paths.
    """
    try:
        names = os.listdir(directory)[:MAX_LISTED]
    except OSError:
        return {"count": -1, "kinds": {}, "owners": [], "files": []}
    kinds: dict[str, int] = {}
    files: dict[str, int] = {}
    owned = _owners(registry or default_registry)
    rows: dict[tuple[str, tuple[str, int, str]], dict[str, Any]] = {}
    count = 0
    for name in names:
        try:
            target = os.readlink(os.path.join(directory, name))
        except OSError:  # closed meanwhile, or the directory's own descriptor
            continue
        count += 1
        kind = fd_kind(target)
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "file":
            files[target] = files.get(target, 0) + 1
        owner = owned.get(int(name)) if name.isdigit() else None
        if owner is not None:
            type_name, site = owner
            key = (type_name, site.where)
            row = rows.get(key)
            if row is None:
                row = rows[key] = {"type": type_name, **site.to_dict(), "count": 0}
            row["count"] += 1
    return {
        "count": count,
        "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "owners": sorted(rows.values(), key=lambda r: -r["count"])[:TOP_SITES],
        "files": [path for path, _ in sorted(files.items(), key=lambda kv: -kv[1])[:TOP_SITES]],
    }
