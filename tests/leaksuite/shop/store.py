"""Session and cart storage in Redis."""

from __future__ import annotations

import atexit

import redis

_client: redis.Redis | None = None


def _shared(url: str) -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(url)
    return _client


def cart_size(url: str, user_id: int) -> int:
    """One client for the process, made on first use."""
    return int(_shared(url).llen(f"cart:{user_id}"))


def cart_size_own_client(url: str, user_id: int) -> int:
    """A client per call, closed on the way out."""
    with redis.Redis.from_url(url) as client:
        return int(client.llen(f"cart:{user_id}"))


def cart_size_closed_at_exit(url: str, user_id: int) -> int:
    """A client per call, "closed at exit": alive, and connected, until then."""
    client = redis.Redis.from_url(url)  # LEAK: redis_client_per_call
    atexit.register(client.close)
    return int(client.llen(f"cart:{user_id}"))
