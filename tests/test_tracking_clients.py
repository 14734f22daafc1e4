"""Known clients against real servers: per-call clients are reported, shared ones are not."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import servers

from runtime_guard import _frames, signals, tracking
from runtime_guard._install import attach_components
from runtime_guard.config import Config
from runtime_guard.guard import Guard
from runtime_guard.tracking import UnreleasedReport, live_objects

# Leaked clients on purpose: their finalizers warn, which is the case being measured.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

N = 12


def _line(text: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith(f"# {text}"))


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    tracking.untrack_all()  # counts start at zero even if an earlier test left a guard
    yield
    tracking.untrack_all()


@pytest.fixture(scope="module")
def http_server() -> Iterator[servers.HttpServer]:
    server = servers.start_http()
    yield server
    server.stop()


class Watch:
    """An unstarted guard with the standard components, and the reports it sends."""

    def __init__(self) -> None:
        self.guard = Guard(Config.from_options({"track_clients": True}, environ={}))
        attach_components(self.guard)
        self.reports: list[UnreleasedReport] = []
        signals.unreleased_objects.connect(self._receive)
        self.guard.sample()

    def _receive(self, sender: Any, report: UnreleasedReport) -> None:
        self.reports.append(report)

    def check(self) -> dict[str, UnreleasedReport]:
        gc.collect()
        self.guard.sample()
        self.guard.flush_signals()
        return {r.type: r for r in self.reports}

    def close(self) -> None:
        signals.unreleased_objects.disconnect(self._receive)
        self.guard.stop()


@pytest.fixture
def watch() -> Iterator[Watch]:
    watch = Watch()
    yield watch
    watch.close()


def _ours(sites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in sites if s["file"] == __file__]


# -- redis --------------------------------------------------------------------------------


def get_user_leaky(url: str) -> Any:
    import redis

    client = redis.Redis.from_url(url)  # per-call redis client
    return client.get("user")


def test_redis_client_per_call_is_reported_with_its_line(
    watch: Watch, redis_server: servers.RedisServer
) -> None:
    """A redis.Redis made per call and never closed is reported at its exact file and line."""
    for _ in range(N):
        get_user_leaky(redis_server.url)
    report = watch.check()["redis.Redis"]
    assert "collected_unreleased" in report.reasons
    assert report.collected_unreleased == N
    top = report.collected_sites[0]
    assert (top["file"], top["line"], top["function"]) == (
        __file__,
        _line("per-call redis client"),
        "get_user_leaky",
    )
    assert top["count"] == N


def test_redis_clients_kept_alive_exceed_max_live(
    watch: Watch, redis_server: servers.RedisServer
) -> None:
    """Per-call clients that pile up live are reported over max_live with their site."""
    import redis

    tracking.track("redis.Redis", max_live=N // 2)
    host, port = redis_server.host, redis_server.port
    kept = [redis.Redis(host=host, port=port) for _ in range(N)]  # kept alive
    for client in kept:
        client.ping()
    report = watch.check()["redis.Redis"]
    assert report.reasons == ["max_live"]
    assert (report.live, report.unreleased) == (N, N)
    assert report.sites[0]["line"] == _line("kept alive")
    assert f"{N} live redis.Redis" in str(report)
    for client in kept:
        client.close()


def test_redis_shared_client_or_pool_is_not_reported(
    watch: Watch, redis_server: servers.RedisServer
) -> None:
    """The same work through one shared client or a shared pool is not reported."""
    import redis

    shared = redis.Redis.from_url(redis_server.url)
    pool = redis.ConnectionPool.from_url(redis_server.url)
    for _ in range(N):
        shared.get("user")
        redis.Redis(connection_pool=pool).get("user")  # per call, on a shared pool
    assert "redis.Redis" not in watch.check()
    counts = live_objects()["redis.Redis"]
    assert counts["collected_unreleased"] == 0
    assert counts["unreleased"] == 1
    shared.close()
    pool.disconnect()


def test_closing_each_redis_client_brings_unreleased_to_zero(
    redis_server: servers.RedisServer, watch: Watch
) -> None:
    """Closing (or disconnecting the pool of) each client makes the unreleased count fall to 0."""
    import redis

    clients = [redis.Redis.from_url(redis_server.url) for _ in range(N)]
    for client in clients:
        client.set("k", "v")
    assert live_objects()["redis.Redis"]["unreleased"] == N
    for client in clients[1:]:
        client.close()
    clients[0].connection_pool.disconnect()
    counts = live_objects()["redis.Redis"]
    assert (counts["unreleased"], counts["released"]) == (0, N)
    assert "redis.Redis" not in watch.check()


# -- HTTP clients -------------------------------------------------------------------------


def fetch_with_httpx(url: str) -> str:
    import httpx

    client = httpx.Client()  # per-call httpx client
    return client.get(url).text


def fetch_with_requests(url: str) -> str:
    import requests

    session = requests.Session()  # per-call requests session
    return session.get(url).text


def test_httpx_and_requests_per_call_clients_are_reported(
    watch: Watch, http_server: servers.HttpServer
) -> None:
    """Per-call httpx clients and requests sessions left open are reported at their lines."""
    for _ in range(N):
        assert fetch_with_httpx(http_server.url) == "ok"
        assert fetch_with_requests(http_server.url) == "ok"
    reports = watch.check()
    for name, marker in (
        ("httpx.Client", "per-call httpx client"),
        ("requests.Session", "per-call requests session"),
    ):
        assert reports[name].collected_unreleased == N
        assert reports[name].collected_sites[0]["line"] == _line(marker)


def test_shared_http_clients_are_not_reported(
    watch: Watch, http_server: servers.HttpServer
) -> None:
    """A shared client, a ``with`` block and ``requests.get`` release what they make."""
    import httpx
    import requests

    with httpx.Client() as shared:
        for _ in range(N):
            assert shared.get(http_server.url).text == "ok"
            assert requests.get(http_server.url, timeout=10).text == "ok"
            with requests.Session() as session:
                session.get(http_server.url)
    reports = watch.check()
    assert "httpx.Client" not in reports and "requests.Session" not in reports
    assert live_objects()["requests.Session"]["released"] == 2 * N


def test_raw_socket_left_open_is_live_and_unreleased(
    watch: Watch, http_server: servers.HttpServer
) -> None:
    """A raw socket left open counts as live and unreleased at its line until closed."""
    host, port = http_server.server.server_address[:2]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # raw socket left open
    sock.connect((str(host), int(port)))
    mine = _ours(live_objects()["socket.socket"]["sites"])
    assert mine[0]["line"] == _line("raw socket left open") and mine[0]["unreleased"] == 1
    sock.close()
    assert _ours(live_objects()["socket.socket"]["sites"])[0]["unreleased"] == 0
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # raw socket dropped
    report = watch.check()["socket.socket"]
    assert _ours(report.collected_sites)[0]["line"] == _line("raw socket dropped")


# -- asyncio ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_asyncio_redis_and_httpx_per_call_clients(
    redis_server: servers.RedisServer, http_server: servers.HttpServer
) -> None:
    """redis.asyncio and httpx.AsyncClient made per call are unreleased until aclose()."""
    import httpx
    import redis.asyncio

    watch = Watch()
    try:
        tracking.track("redis.asyncio.Redis", max_live=N - 1)
        clients = []
        for _ in range(N):
            client = redis.asyncio.Redis.from_url(redis_server.url)  # per-call async redis
            await client.set("k", "v")
            clients.append(client)
        http = []
        for _ in range(N):
            session = httpx.AsyncClient()  # per-call async http
            assert (await session.get(http_server.url)).text == "ok"
            http.append(session)
        data = live_objects()
        assert data["redis.asyncio.Redis"]["unreleased"] == N
        assert data["redis.asyncio.Redis"]["sites"][0]["line"] == _line("per-call async redis")
        assert data["httpx.AsyncClient"]["unreleased"] == N
        assert data["httpx.AsyncClient"]["sites"][0]["line"] == _line("per-call async http")
        assert watch.check()["redis.asyncio.Redis"].reasons == ["max_live"]
        for client in clients:
            await client.aclose()
        for session in http:
            await session.aclose()
        async with httpx.AsyncClient() as shared:
            await shared.get(http_server.url)
        data = live_objects()
        assert data["redis.asyncio.Redis"]["unreleased"] == 0
        assert data["httpx.AsyncClient"]["unreleased"] == 0
        assert data["httpx.AsyncClient"]["released"] == N + 1
    finally:
        watch.close()


@pytest.mark.asyncio
async def test_aiohttp_session_per_call_is_unreleased_until_closed(
    http_server: servers.HttpServer,
) -> None:
    """aiohttp sessions made per call are unreleased until ``close()`` is awaited."""
    import aiohttp

    tracking.enable_known_clients()
    sessions = []
    for _ in range(3):
        session = aiohttp.ClientSession()  # per-call aiohttp session
        async with session.get(http_server.url) as response:
            assert await response.text() == "ok"
        sessions.append(session)
    data = live_objects()["aiohttp.ClientSession"]
    assert data["unreleased"] == 3
    assert data["sites"][0]["line"] == _line("per-call aiohttp session")
    for session in sessions:
        await session.close()
    assert live_objects()["aiohttp.ClientSession"]["unreleased"] == 0
    await asyncio.sleep(0)
    tracking.untrack_all()


# -- databases ----------------------------------------------------------------------------


def query_leaky(dsn: str) -> Any:
    import psycopg

    conn = psycopg.connect(dsn)  # per-call psycopg connection
    return conn.execute("select 1").fetchone()


def test_psycopg_connections_per_call_are_reported(
    watch: Watch, postgres_server: servers.PostgresServer
) -> None:
    """psycopg connections opened per call and never closed are reported at their line."""
    import psycopg

    for _ in range(N):
        assert query_leaky(postgres_server.dsn) == (1,)
    with psycopg.connect(postgres_server.dsn) as conn:
        conn.execute("select 1")
    report = watch.check()["psycopg.Connection"]
    assert report.collected_unreleased == N
    assert report.collected_sites[0]["line"] == _line("per-call psycopg connection")
    assert live_objects()["psycopg.Connection"]["released"] == 1


@pytest.mark.asyncio
async def test_psycopg_async_connection_is_released_by_close(
    postgres_server: servers.PostgresServer,
) -> None:
    """An AsyncConnection is unreleased until its ``close()`` is awaited."""
    import psycopg

    tracking.enable_known_clients()
    conn = await psycopg.AsyncConnection.connect(postgres_server.dsn)  # async psycopg
    data = live_objects()["psycopg.AsyncConnection"]
    assert data["unreleased"] == 1 and data["sites"][0]["line"] == _line("async psycopg")
    await conn.close()
    assert live_objects()["psycopg.AsyncConnection"]["released"] == 1
    tracking.untrack_all()


def test_sqlalchemy_engine_is_released_by_dispose(tmp_path: Path, watch: Watch) -> None:
    """An Engine counts as unreleased until ``dispose()``."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/db.sqlite")  # engine made here
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("select 1"))
    data = live_objects()["sqlalchemy.Engine"]
    assert data["unreleased"] == 1 and data["sites"][0]["line"] == _line("engine made here")
    engine.dispose()
    assert live_objects()["sqlalchemy.Engine"]["released"] == 1


# -- the import hook ----------------------------------------------------------------------

_HOOK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from importlib.machinery import PathFinder
    import requests                      # imported before the guard
    import runtime_guard
    from runtime_guard.tracking.clients import watcher
    runtime_guard.install(interval=60)
    assert "httpx" not in sys.modules
    before = list(sys.meta_path)
    import csv                           # an unrelated import
    spec_loader = type(sys.modules["csv"].__spec__.loader).__name__
    import httpx                         # imported after the guard
    a, b = requests.Session(), httpx.Client()
    data = runtime_guard.live_objects()
    out = {
        "requests": data["requests.Session"]["live"],
        "httpx": data["httpx.Client"]["live"],
        "watcher_first": before.index(watcher) < before.index(PathFinder),
        "csv_loader": spec_loader,
    }
    a.close(); b.close()
    runtime_guard.uninstall()
    out["after"] = watcher in sys.meta_path
    out["restored"] = "__init__" in vars(httpx.Client) and not hasattr(
        httpx.Client.__init__, "__wrapped__")
    print(json.dumps(out))
    """
)


def test_clients_are_tracked_whether_imported_before_or_after_install() -> None:
    """Known clients are tracked whether imported before or after install; uninstall undoes it."""
    done = subprocess.run(
        [sys.executable, "-c", _HOOK_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {
        "requests": 1,
        "httpx": 1,
        "watcher_first": True,
        "csv_loader": "SourceFileLoader",
        "after": False,
        "restored": True,
    }


def test_uninstall_leaves_client_classes_exactly_as_before() -> None:
    """After install() and uninstall() the client and pool classes are as they were."""
    import httpx
    import psycopg
    import redis
    import redis.asyncio
    import requests
    import sqlalchemy

    import runtime_guard

    classes = [
        redis.Redis,
        redis.ConnectionPool,
        redis.BlockingConnectionPool,
        redis.asyncio.Redis,
        redis.asyncio.ConnectionPool,
        httpx.Client,
        httpx.AsyncClient,
        requests.Session,
        psycopg.Connection,
        sqlalchemy.Engine,
        socket.socket,
    ]
    tracking.untrack_all()  # a guard another test left unstopped may still track clients
    before = [list(vars(cls).items()) for cls in classes]
    runtime_guard.install(interval=60)
    assert vars(redis.Redis)["__init__"] is not dict(before[0])["__init__"]
    runtime_guard.uninstall()
    assert [list(vars(cls).items()) for cls in classes] == before
    session = requests.Session()
    session.close()
    assert "requests.Session" not in live_objects()


def test_socket_pairs_a_library_makes_are_its_own_and_the_applications_are_tracked(
    watch: Watch,
) -> None:
    """A loop's and an installed library's wake-up pairs are not the application's clients;
    a pair the application makes is, at its line."""
    # A library's function, as if installed: its code's file is in site-packages.
    # Installed packages' directory (not library_directories()[0]: where the guard itself is
    # installed, its own directory is the longest of them).
    library = os.path.join(sysconfig.get_paths()["purelib"], "wakeup_lib.py")
    assert _frames.kind(library) is _frames.FrameKind.LIBRARY
    namespace: dict[str, Any] = {}
    exec(
        compile("import socket\ndef pair():\n    return socket.socketpair()\n", library, "exec"),
        namespace,
    )
    loop = asyncio.new_event_loop()
    theirs = namespace["pair"]()  # a library's socket pair
    mine = socket.socketpair()  # the application's socket pair
    try:
        sites = _ours(live_objects()["socket.socket"]["sites"])
        assert {s["line"]: s["unreleased"] for s in sites if s["unreleased"]} == {
            _line("the application's socket pair"): 2
        }
    finally:
        loop.close()
        for end in (*theirs, *mine):
            end.close()
