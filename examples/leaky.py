"""The request handling every example app shares, with a deliberate leak switch.

``EXAMPLE_LEAK`` (comma-separated) turns the leaks on:

- ``cache``: an unbounded module-level cache that keeps every response (``CACHE_BYTES`` each);
- ``redis``: a new Redis client per request, kept and never closed.

Two optional features are declared for shedding: ``recommendations`` (shed at HIGH; it
holds a ``EXAMPLE_MODEL_MB`` model in memory, dropped while shed and loaded again after) and
``analytics`` (a sheddable function, shed at ELEVATED). ``EXAMPLE_REDIS_URL`` says where Redis
is (default ``redis://127.0.0.1:6379/0``). ``EXAMPLE_GUARD=0`` runs the apps without the guard.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from typing import Any

import runtime_guard

LEAKS = frozenset(filter(None, os.environ.get("EXAMPLE_LEAK", "").split(",")))
"""Which leaks are switched on."""
REDIS_URL = os.environ.get("EXAMPLE_REDIS_URL", "redis://127.0.0.1:6379/0")
CACHE_BYTES = int(os.environ.get("EXAMPLE_CACHE_BYTES", str(64 * 1024)))
MODEL_MB = int(os.environ.get("EXAMPLE_MODEL_MB", "16"))
GUARDED = os.environ.get("EXAMPLE_GUARD", "1") != "0"
"""Whether the apps install the guard (``EXAMPLE_GUARD=0``: the same app, unguarded)."""

_model: list[bytes] | None = None
_model_lock = threading.Lock()  # one load at a time, or each handler thread loads its own


def _drop_model() -> None:
    global _model
    _model = None


recommendations = runtime_guard.feature("recommendations", shed_at="high", on_shed=_drop_model)
"""An optional, memory-hungry part of each response: its model is dropped while shed."""

_counter = itertools.count()
_responses: dict[int, bytes] = {}  # the unbounded cache: nothing ever evicts
_clients: list[Any] = []  # the per-request Redis clients nobody closes


@runtime_guard.sheddable("analytics", shed_at="elevated", fallback=None)
def analytics(path: str) -> str:
    """Optional work per request (shed first under pressure)."""
    return hashlib.sha256(path.encode()).hexdigest()[:12]


def remember(key: int, size: int) -> None:
    """Keep a response forever: the leaking line."""
    _responses[key] = os.urandom(size)


def connect_per_request() -> None:
    """Open a new Redis client for this request and keep it: the leaking client."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.incr("example:requests")
    _clients.append(client)


def handle(path: str) -> dict[str, Any]:
    """Do one request's work; returns the JSON-ready response body."""
    n = next(_counter)
    if "cache" in LEAKS:
        remember(n, CACHE_BYTES)
    if "redis" in LEAKS:
        connect_per_request()
    body: dict[str, Any] = {"request": n, "pid": os.getpid(), "analytics": analytics(path)}
    if runtime_guard.enabled("recommendations"):
        body["recommendations"] = recommend(n)
    return body


def recommend(n: int) -> list[str]:
    """Use the model, loading it first if needed (megabyte blocks: freed at once when dropped)."""
    global _model
    model = _model
    if model is None:
        with _model_lock:
            model = _model
            if model is None:
                model = _model = [os.urandom(1 << 20) for _ in range(MODEL_MB)]
    return [f"item-{model[i % len(model)][n % 1024]}" for i in range(5)] if model else []
