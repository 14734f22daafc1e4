"""Shared fixtures: every test leaves no guard installed behind it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import servers  # tests/servers.py: pytest puts this directory on sys.path

from runtime_guard.testing import reset


@pytest.fixture(autouse=True)
def _no_guard_left_behind() -> Iterator[None]:
    yield
    reset()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.RedisServer]:
    """A real redis-server on a free loopback port for the whole session (``.url``)."""
    try:
        server = servers.start_redis()
    except servers.Unavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.PostgresServer]:
    """A real PostgreSQL cluster on a free loopback port for the whole session (``.dsn``)."""
    try:
        server = servers.start_postgres()
    except servers.Unavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()
