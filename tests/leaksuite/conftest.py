"""Fixtures of the leak-check evaluation suite: the services its handlers talk to.

Redis and PostgreSQL come from the environment (``LEAKSUITE_REDIS_URL``,
``LEAKSUITE_POSTGRES_URL``); tests that need one are skipped without it. The user service
is stubbed in-process, on a thread of this process, as a test would run a fake upstream.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Iterator

import pytest

# LEAKSUITE_BACKGROUND=1: a thread of the kind an agent or an exporter runs, working every
# 5 ms for the whole session (the benchmark's noisy variant).
_BACKGROUND = os.environ.get("LEAKSUITE_BACKGROUND") == "1"


@pytest.fixture(scope="session", autouse=_BACKGROUND)
def background_flusher() -> Iterator[None]:
    """Aggregates counters and serialises them every 5 ms, keeping the last 100 flushes."""
    stop = threading.Event()
    flushed: deque[str] = deque(maxlen=100)

    def flush() -> None:
        counters: dict[str, int] = {}
        n = 0
        while not stop.wait(0.005):
            n += 1
            counters[f"requests.{n % 40}"] = n
            flushed.append(json.dumps(counters))

    thread = threading.Thread(target=flush, name="flusher", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    """Base URL of the in-process user service."""
    from shop.upstream import Upstream

    server = Upstream()
    yield server.url
    server.stop()


def _server_url(variable: str) -> str:
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"{variable} is not set")
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _server_url("LEAKSUITE_REDIS_URL")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A libpq URL (``postgresql://...``) for psycopg."""
    return _server_url("LEAKSUITE_POSTGRES_URL")


@pytest.fixture(scope="session")
def postgres_url(postgres_dsn: str) -> str:
    """The same database as a SQLAlchemy URL, on the psycopg driver."""
    return postgres_dsn.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def app() -> object:
    from shop.app import App

    return App("storefront")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
