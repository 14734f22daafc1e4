"""What every scenario app does per request or task, with the leak shapes of the scenarios.

Configured from the environment, as a deployed app would be:

- ``SVC_LEAK``: comma-separated leak shapes, none by default (a clean app):
  ``cache`` (a response cache keyed by request id that nothing evicts), ``clients`` (a Redis
  client made per call of the route that reads Redis, every other call, and kept),
  ``objects`` (a growing list of small event objects), ``buffers`` (bytes buffers appended
  to a list);
- ``SVC_LEAK_KB``: kilobytes leaked per call, shared between the shapes (default 50: at 40
  requests per second, 2 MB/s; a kept Redis client holds about 48 KiB, so ``clients``
  takes about 24 of them and the other shapes share the rest);
- ``SVC_REDIS_URL``: where Redis is;
- ``SVC_SPIKE_MB``: what the ``spike`` call allocates once and frees (default 50);
- ``SVC_LEAK_WORKERS=odd``: only gunicorn workers of odd age leak (the first one started and
  each one started in its place), the others stay flat;
- ``SVC_MODEL_MB``: megabytes each worker loads at start and keeps (a model, a big
  lookup table): bigger workers, less headroom (default 0).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from typing import Any

LEAKS = frozenset(filter(None, os.environ.get("SVC_LEAK", "").split(",")))
if (
    os.environ.get("SVC_LEAK_WORKERS") == "odd"
    and int(os.environ.get("SVC_WORKER_AGE", "1")) % 2 == 0
):
    LEAKS = frozenset()
LEAK_KB = float(os.environ.get("SVC_LEAK_KB", "50"))
REDIS_URL = os.environ.get("SVC_REDIS_URL", "redis://127.0.0.1:6379/0")
SPIKE_MB = int(os.environ.get("SVC_SPIKE_MB", "50"))
MODEL_MB = int(os.environ.get("SVC_MODEL_MB", "0"))

# Loaded at start, used by every call, never freed: not a leak, just a big worker.
_model = [os.urandom(1 << 20) for _ in range(MODEL_MB)]

_counter = itertools.count()
_responses: dict[int, bytes] = {}  # the response cache nobody evicts
_clients: list[Any] = []  # per-call Redis clients, kept
_events: list[Event] = []  # every event ever seen
_buffers: list[bytearray] = []  # every upload buffer ever read

# A kept Redis client with its connection holds about this much (measured: the container's
# usage per kept client under gunicorn), made on every other call.
_CLIENT_BYTES = 48 * 1024
# What one call leaks in each other shape: they share what the clients leave of SVC_LEAK_KB.
_SHARE = max(LEAK_KB * 1024 - ("clients" in LEAKS) * _CLIENT_BYTES / 2, 0) / max(
    len(LEAKS - {"clients"}), 1
)


class Event:
    """One audit event, with the small objects a real one carries."""

    __slots__ = ("fields", "key", "tags")

    def __init__(self, key: int, size: int) -> None:
        self.key = key
        self.tags = [f"tag-{key}-{i}" for i in range(8)]
        # About 100 bytes per field: a str key and a str value in a dict.
        self.fields = {f"f{i}": f"{key:08d}-{i:04d}-" + "x" * 48 for i in range(size // 160)}


def cache_response(key: int, body: bytes) -> None:
    """Keep a response for later requests with the same id (none ever come): the leaking line."""
    _responses[key] = body + os.urandom(int(_SHARE))


def connect() -> Any:
    """A Redis client for this call, kept for later: the leaking client."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    _clients.append(client)
    return client


def record_event(key: int) -> None:
    """Append the call's audit event to the in-memory log (never trimmed)."""
    _events.append(Event(key, int(_SHARE)))


def keep_buffer() -> None:
    """Read the call's upload into a buffer and keep it (never released)."""
    _buffers.append(bytearray(os.urandom(int(_SHARE))))


def handle(path: str) -> dict[str, Any]:
    """One request's or task's work; returns the JSON-ready answer."""
    n = next(_counter)
    # Work every app does: a little hashing and JSON, temporary objects freed at once.
    digest = hashlib.sha256(f"{path}-{n}".encode()).hexdigest()
    body = json.dumps({"request": n, "digest": digest, "items": list(range(50))}).encode()
    if _model:
        digest = hashlib.sha256(_model[n % len(_model)][:64]).hexdigest()
    if "cache" in LEAKS:
        cache_response(n, body)
    if "clients" in LEAKS and n % 2:
        connect().incr("svc:calls")
    if "objects" in LEAKS:
        record_event(n)
    if "buffers" in LEAKS:
        keep_buffer()
    return {"request": n, "pid": os.getpid(), "digest": digest[:12], "size": len(body)}


def spike() -> dict[str, Any]:
    """A call that builds SPIKE_MB of rows once (a large report), then frees them."""
    started = time.monotonic()
    rows = [{"id": i, "name": f"row-{i:09d}" * 3} for i in range(SPIKE_MB * 1024 * 1024 // 320)]
    size = len(rows)
    del rows
    return {"spike_rows": size, "pid": os.getpid(), "seconds": time.monotonic() - started}
