"""Fixtures of the leak-check evaluation suite: the services its handlers talk to.

Redis and PostgreSQL come from the environment (``LEAKSUITE_REDIS_URL``,
``LEAKSUITE_POSTGRES_URL``); tests that need one are skipped without it. The user service
is stubbed in-process, on a thread of this process, as a test would run a fake upstream.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    """Base URL of the in-process user service."""
    from shop.upstream import Upstream

    server = Upstream()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("LEAKSUITE_REDIS_URL")
    if not url:
        pytest.skip("LEAKSUITE_REDIS_URL is not set")
    return url


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A libpq URL (``postgresql://...``) for psycopg."""
    url = os.environ.get("LEAKSUITE_POSTGRES_URL")
    if not url:
        pytest.skip("LEAKSUITE_POSTGRES_URL is not set")
    return url


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
