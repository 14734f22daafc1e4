# mypy: disallow-untyped-calls=False, disallow-untyped-decorators=False
# (these tests drive third-party code that ships without types: Celery, redis-py, hypothesis)
"""Pool checkouts against real PostgreSQL and Redis: held too long, idle in transaction,
exhausted pools with their holders, and clean use that never reports."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import servers
from clocked import Clocked, clocked, line_of

from runtime_guard import signals
from runtime_guard.pools import Checkout, checkouts, hooks
from runtime_guard.pools.checkouts import default_registry
from runtime_guard.testing import make_guard

# Connections dropped without being returned are the case being tested: psycopg says so.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _line(text: str) -> int:
    return line_of(__file__, text)


@pytest.fixture
def watch() -> Iterator[Clocked]:
    signals_ = [signals.checkout_held, signals.pool_exhausted]
    with clocked(signals_, (default_registry,), track_clients=True) as found:
        found.guard.sample()
        yield found


def _sqlalchemy_url(postgres: servers.PostgresServer) -> str:
    return postgres.url.replace("postgresql://", "postgresql+psycopg://")


# -- held too long ------------------------------------------------------------------------


def test_a_flask_handler_that_never_returns_its_connection_is_reported_with_its_line(
    watch: Clocked, postgres_server: servers.PostgresServer
) -> None:
    """psycopg_pool connections taken in a handler and never put back are reported once
    each past checkout_warn_after, at the handler's line, as lost to the pool."""
    import flask
    import psycopg_pool

    pool = psycopg_pool.ConnectionPool(postgres_server.dsn, min_size=1, max_size=8, open=True)
    app = flask.Flask(__name__)

    @app.get("/user")
    def user() -> dict[str, Any]:
        conn = pool.getconn()  # checked out, never returned
        row = conn.execute("select 1").fetchone()
        return {"id": row[0] if row else None}

    @app.get("/clean")
    def clean() -> dict[str, Any]:
        with pool.connection() as conn:
            row = conn.execute("select 1").fetchone()
        return {"id": row[0] if row else None}

    try:
        client = app.test_client()
        for _ in range(3):
            assert client.get("/user").json == {"id": 1}
            assert client.get("/clean").json == {"id": 1}
        watch.after(29.0)
        assert watch.sent["checkout_held"] == []
        watch.after(2.0)
        assert len(watch.sent["checkout_held"]) == 3
        for payload in watch.sent["checkout_held"]:
            assert payload["site"].lineno == _line("checked out, never returned")
            assert payload["seconds"] >= 30.0
        pools = watch.guard.health()["pools"]
        (name,) = [n for n in pools if pools[n]["library"] == "psycopg_pool"]
        assert watch.sent["checkout_held"][0]["pool"] == name
        assert pools[name]["held_too_long"] == 3
        holder = pools[name]["holders"][0]
        assert holder["state"].startswith("lost")
        watch.after(60.0)
        assert len(watch.sent["checkout_held"]) == 3  # once per checkout
    finally:
        pool.close()


def test_connections_lost_one_after_another_are_each_reported(
    watch: Clocked, postgres_server: servers.PostgresServer
) -> None:
    """Each psycopg_pool connection collected unreturned stays one lost checkout, even when
    the next connection is made at the same address (the same ``id()``)."""
    import psycopg_pool

    pool = psycopg_pool.ConnectionPool(postgres_server.dsn, min_size=1, max_size=8, open=True)
    ids = set()
    try:
        for _ in range(6):
            conn = pool.getconn()  # dropped, never returned
            ids.add(id(conn))
            del conn
            gc.collect()
        watch.after(31.0)
        assert len(watch.sent["checkout_held"]) == 6, f"{len(ids)} distinct ids"
        pools = watch.guard.health()["pools"]
        (name,) = [n for n in pools if pools[n]["library"] == "psycopg_pool"]
        assert pools[name]["held_too_long"] == 6
    finally:
        pool.close(timeout=1)


def test_a_session_left_open_in_a_worker_thread_is_reported_idle_in_transaction(
    watch: Clocked, postgres_server: servers.PostgresServer
) -> None:
    """A scoped_session used by a request thread and never removed holds its connection in
    an open transaction: reported with the line and ``idle in transaction``."""
    import sqlalchemy
    from sqlalchemy.orm import scoped_session, sessionmaker

    engine = sqlalchemy.create_engine(_sqlalchemy_url(postgres_server), pool_size=4)
    db = scoped_session(sessionmaker(engine))

    def handler() -> int:
        return int(db.execute(sqlalchemy.text("select 1")).scalar_one())  # session never removed

    workers = ThreadPoolExecutor(max_workers=1)  # a server's request thread
    try:
        assert workers.submit(handler).result(30) == 1
        watch.after(31.0)
        (payload,) = watch.sent["checkout_held"]
        assert payload["site"].lineno == _line("session never removed")
        report = watch.guard.component("pools").reports[-1]  # type: ignore[union-attr]
        assert report["state"] == "idle in transaction"
        assert report["thread"].startswith("ThreadPoolExecutor")
        assert "postgresql+psycopg://postgres@" in payload["pool"]
    finally:
        workers.submit(db.remove).result(30)
        workers.shutdown()
        engine.dispose()


def test_redis_connections_taken_and_kept_are_reported_but_commands_and_pubsub_are_not(
    watch: Clocked, redis_server: servers.RedisServer
) -> None:
    """Every redis command checks a connection out and back: never reported; one taken with
    get_connection() and kept is; a pub/sub subscriber holds one by design: never reported."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    for _ in range(50):
        client.set("k", "v")
    subscriber = client.pubsub()
    subscriber.subscribe("news")
    kept = client.connection_pool.get_connection()  # taken and kept
    watch.after(31.0)
    assert [p["site"].lineno for p in watch.sent["checkout_held"]] == [_line("taken and kept")]
    figures = watch.guard.health()["pools"][watch.sent["checkout_held"][0]["pool"]]
    assert figures["in_use"] == 2 and figures["held_too_long"] == 1
    client.connection_pool.release(kept)
    subscriber.close()
    client.close()


# -- exhausted ----------------------------------------------------------------------------


def _hold(engine: Any, ready: threading.Event, done: threading.Event) -> None:
    import sqlalchemy

    with engine.connect() as conn:  # a slow query holds it
        conn.execute(sqlalchemy.text("select 1"))
        ready.set()
        done.wait(30)


def test_an_exhausted_sqlalchemy_pool_is_reported_with_its_longest_holders(
    watch: Clocked, postgres_server: servers.PostgresServer
) -> None:
    """Requests that wait for a pool whose connections are all held, for longer than
    pool_exhausted_after, give one pool_exhausted naming the holders' line."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        _sqlalchemy_url(postgres_server), pool_size=2, max_overflow=0, pool_timeout=30
    )
    done = threading.Event()
    holders, waiters = [], []
    try:
        for _ in range(2):
            ready = threading.Event()
            holders.append(threading.Thread(target=_hold, args=(engine, ready, done)))
            holders[-1].start()
            assert ready.wait(30)
        for _ in range(3):
            waiters.append(threading.Thread(target=_hold, args=(engine, threading.Event(), done)))
            waiters[-1].start()
        _wait_for(lambda: watch.guard.health()["pools"] and _waiting(watch) == 3)
        watch.after(1.0)  # first seen waiting
        watch.after(3.0)
        assert watch.sent["pool_exhausted"] == []
        watch.after(3.0)
        (payload,) = watch.sent["pool_exhausted"]
        assert (payload["in_use"], payload["waiting"]) == (2, 3)
        assert [h.site.lineno for h in payload["holders"]] == [_line("a slow query holds it")] * 2
        assert all(isinstance(h, Checkout) for h in payload["holders"])
        watch.after(3.0)
        assert len(watch.sent["pool_exhausted"]) == 1  # once per episode
    finally:
        done.set()
        for thread in holders + waiters:
            thread.join(30)
        engine.dispose()


def _waiting(watch: Clocked) -> int:
    return sum(p.get("waiting", 0) for p in watch.guard.health()["pools"].values())


def _wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_an_exhausted_psycopg_pool_and_a_blocking_redis_pool_are_reported(
    watch: Clocked, postgres_server: servers.PostgresServer, redis_server: servers.RedisServer
) -> None:
    """psycopg_pool's own waiting count and redis's blocking pool (waiters inside
    get_connection) both turn into pool_exhausted."""
    import psycopg_pool
    import redis

    pg = psycopg_pool.ConnectionPool(postgres_server.dsn, min_size=1, max_size=1, open=True)
    blocking = redis.BlockingConnectionPool.from_url(
        redis_server.url, max_connections=1, timeout=30
    )
    held = [pg.getconn(), blocking.get_connection()]
    waiters = [
        threading.Thread(target=lambda: pg.putconn(pg.getconn(timeout=30))),
        threading.Thread(target=lambda: blocking.release(blocking.get_connection())),
    ]
    try:
        for thread in waiters:
            thread.start()
        _wait_for(lambda: _waiting(watch) == 2)
        watch.after(1.0)
        watch.after(6.0)
        assert sorted(p["waiting"] for p in watch.sent["pool_exhausted"]) == [1, 1]
        names = sorted(p["pool"] for p in watch.sent["pool_exhausted"])
        assert names[0].startswith("pool-") and names[1].startswith("redis://")
    finally:
        pg.putconn(held[0])
        blocking.release(held[1])
        for thread in waiters:
            thread.join(30)
        pg.close()
        blocking.disconnect()


def test_a_pool_used_correctly_under_load_never_reports(
    watch: Clocked, postgres_server: servers.PostgresServer, redis_server: servers.RedisServer
) -> None:
    """Many threads through pools large enough, every connection returned: nothing sent."""
    import psycopg_pool
    import redis
    import sqlalchemy

    engine = sqlalchemy.create_engine(_sqlalchemy_url(postgres_server), pool_size=8)
    pg = psycopg_pool.ConnectionPool(postgres_server.dsn, min_size=2, max_size=8, open=True)
    client = redis.Redis.from_url(redis_server.url)

    def request(i: int) -> None:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select pg_sleep(0.01)"))
        with pg.connection() as conn:
            conn.execute("select 1")
        client.incr("hits")

    try:
        with ThreadPoolExecutor(max_workers=8) as workers:
            for round_ in range(5):
                list(workers.map(request, range(40)))
                watch.after(10.0 + round_)
        assert watch.sent["checkout_held"] == [] and watch.sent["pool_exhausted"] == []
        assert all(p["in_use"] == 0 for p in watch.guard.health()["pools"].values())
        assert all(found.held() == 0 for found in default_registry.all())
    finally:
        engine.dispose()
        pg.close()
        client.close()


# -- never hurt the host ------------------------------------------------------------------


def test_hooks_come_off_exactly_when_the_guard_stops(
    postgres_server: servers.PostgresServer,
) -> None:
    """After the guard stops, the pool classes are as before and SQLAlchemy has no listener."""
    import psycopg_pool
    import redis
    import redis.asyncio
    import sqlalchemy
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    classes = [
        Pool,
        psycopg_pool.ConnectionPool,
        psycopg_pool.AsyncConnectionPool,
        redis.ConnectionPool,
        redis.BlockingConnectionPool,
        redis.asyncio.ConnectionPool,
    ]
    before = [dict(vars(cls)) for cls in classes]
    guard = make_guard()
    component = guard.component("pools")
    assert component is not None and component.hooks is not None  # type: ignore[attr-defined]
    assert sorted(component.hooks.installed) == ["psycopg_pool", "redis", "sqlalchemy"]  # type: ignore[attr-defined]
    assert vars(redis.ConnectionPool)["get_connection"] is not before[3]["get_connection"]
    listeners = [fn for _, _, fn in component.hooks._listeners]  # type: ignore[attr-defined]
    guard.stop()
    assert [dict(vars(cls)) for cls in classes] == before
    assert not any(event.contains(Pool, "checkin", fn) for fn in listeners)
    engine = sqlalchemy.create_engine(_sqlalchemy_url(postgres_server))
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("select 1"))
    assert default_registry.all() == []
    engine.dispose()


def test_a_failing_record_never_breaks_a_checkout(
    watch: Clocked, redis_server: servers.RedisServer, caplog: Any
) -> None:
    """With the registry's clock raising, commands still work and one warning is logged."""
    import redis

    def broken() -> float:
        raise RuntimeError("clock gone")

    default_registry.clock = broken
    client = redis.Redis.from_url(redis_server.url)
    for _ in range(3):
        assert client.ping()
    warnings = [r for r in caplog.records if "recording a redis checkout failed" in r.getMessage()]
    assert len(warnings) == 1
    client.close()


def test_checkouts_kept_per_pool_are_capped(
    watch: Clocked, redis_server: servers.RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_CHECKOUTS a pool's checkouts are counted in use but not recorded one by one."""
    import redis

    monkeypatch.setattr(hooks, "MAX_CHECKOUTS", 5)
    pool = redis.ConnectionPool.from_url(redis_server.url)
    taken = [pool.get_connection() for _ in range(12)]
    (found,) = default_registry.all()
    assert len(found.checkouts) == 5 and found.held() == 12
    for connection in taken:
        pool.release(connection)
    assert found.held() == 0
    pool.disconnect()


def test_transaction_state_reads_psycopg_without_a_round_trip(
    postgres_server: servers.PostgresServer,
) -> None:
    """idle, idle in transaction and active as libpq reports them; None for anything else."""
    import psycopg

    with psycopg.connect(postgres_server.dsn) as conn:
        assert checkouts.transaction_state(conn) == "idle"
        conn.execute("select 1")
        assert checkouts.transaction_state(conn) == "idle in transaction"
    assert checkouts.transaction_state(object()) is None


def test_two_guards_share_the_hooks_and_count_each_waiter_once(
    redis_server: servers.RedisServer,
) -> None:
    """With two guards in a process no pool is wrapped twice (one waiter is one waiter), and
    stopping one leaves the other's checkouts watched."""
    import redis

    first, second = make_guard(), make_guard()
    blocking = redis.BlockingConnectionPool.from_url(
        redis_server.url, max_connections=1, timeout=30
    )
    held = blocking.get_connection()
    waiter = threading.Thread(target=lambda: blocking.release(blocking.get_connection()))
    try:
        waiter.start()
        (found,) = default_registry.all()
        _wait_for(lambda: found.requests > 0)
        time.sleep(0.2)
        assert found.requests == 1
        first.stop()
        blocking.release(held)
        waiter.join(30)
        held = blocking.get_connection()  # still recorded, by the hooks the second kept
        assert found.held() == 1
        blocking.release(held)
    finally:
        first.stop()
        second.stop()
        blocking.disconnect()
