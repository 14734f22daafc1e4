"""Shared fixtures: every test leaves no guard installed behind it; servers and a
container directory of its own for the tests that ask."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import servers  # tests/servers.py: pytest puts this directory on sys.path

from runtime_guard.testing import reset


@pytest.fixture(autouse=True)
def _no_guard_left_behind() -> Iterator[None]:
    yield
    reset()


@pytest.fixture
def container_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's container is its own directory, not the one this machine's cgroup names."""
    directory = tmp_path / "container"
    monkeypatch.setenv("RUNTIME_GUARD_CONTAINER_DIR", str(directory))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    return directory


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
