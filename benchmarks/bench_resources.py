"""Cost of watching resources: a pool checkout, a thread and a task creation, each beside the
same without the guard's hooks, in one run.

Prints per operation, in microseconds of this process's CPU time (best of rounds, hooked and
unhooked measured in alternation): a SQLAlchemy ``QueuePool`` checkout and return over
sqlite3, a psycopg_pool ``getconn``/``putconn`` against a real PostgreSQL, a redis-py
``get_connection``/``release`` and a ``PING`` against a real Redis, a ``Thread()`` made
(and one started and joined, for scale), and ``loop.create_task`` of a finished coroutine.
Targets: under 2 us added per checkout, per thread and per task creation.

    python benchmarks/bench_resources.py
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import servers

from runtime_guard.pools import PoolRegistry
from runtime_guard.pools.component import PoolComponent
from runtime_guard.resources import CreationHooks

ROUNDS = 7


def cpu_us(fn: Callable[[], object], number: int) -> float:
    """CPU microseconds per call of ``fn`` (CPU time: comparable on a shared machine)."""
    start = time.process_time()
    for _ in range(number):
        fn()
    return (time.process_time() - start) / number * 1e6


def paired(
    run: Callable[[], float], hook: Callable[[], None], unhook: Callable[[], None]
) -> tuple[float, float]:
    """Best figure without and with the hooks, alternating round by round."""
    plain, hooked = [], []
    for _ in range(ROUNDS):
        plain.append(run())
        hook()
        hooked.append(run())
        unhook()
        gc.collect()
    return min(plain), min(hooked)


def row(label: str, plain: float, hooked: float) -> None:
    print(f"{label:<56} {plain:9.3f} {hooked:9.3f} {hooked - plain:+8.3f} {hooked / plain:6.2f}x")


def pool_hooks() -> tuple[Callable[[], None], Callable[[], None]]:
    registry = PoolRegistry()
    component: list[PoolComponent] = []

    def hook() -> None:
        component.append(PoolComponent(registry=registry))

    def unhook() -> None:
        component.pop().hooks.disable()  # type: ignore[union-attr]
        registry.clear()

    return hook, unhook


def bench_pools(postgres: servers.PostgresServer, redis_server: servers.RedisServer) -> None:
    import psycopg_pool
    import redis
    import sqlalchemy

    hook, unhook = pool_hooks()
    with tempfile.TemporaryDirectory() as directory:
        engine = sqlalchemy.create_engine(
            f"sqlite:///{directory}/bench.db", poolclass=sqlalchemy.pool.QueuePool
        )

        def sqlalchemy_checkout() -> None:
            engine.pool.connect().close()

        row(
            "SQLAlchemy QueuePool connect() + close() (sqlite3)",
            *paired(lambda: cpu_us(sqlalchemy_checkout, 20_000), hook, unhook),
        )
        engine.dispose()
    pg = psycopg_pool.ConnectionPool(postgres.dsn, min_size=1, max_size=1, open=True)

    def psycopg_checkout() -> None:
        pg.putconn(pg.getconn())

    row(
        "psycopg_pool getconn() + putconn() (PostgreSQL)",
        *paired(lambda: cpu_us(psycopg_checkout, 5_000), hook, unhook),
    )
    pg.close()
    pool = redis.ConnectionPool.from_url(redis_server.url)
    client = redis.Redis(connection_pool=pool)
    client.ping()

    def redis_checkout() -> None:
        pool.release(pool.get_connection())

    row(
        "redis ConnectionPool get_connection() + release()",
        *paired(lambda: cpu_us(redis_checkout, 20_000), hook, unhook),
    )
    row(
        "redis PING (a command: one checkout and a round trip)",
        *paired(lambda: cpu_us(client.ping, 5_000), hook, unhook),
    )
    client.close()


def bench_creations() -> None:
    hooks = CreationHooks()

    def made() -> None:
        threading.Thread(target=int)

    row(
        "threading.Thread() made",
        *paired(lambda: cpu_us(made, 20_000), hooks.enable, hooks.disable),
    )

    def started() -> None:
        thread = threading.Thread(target=int)
        thread.start()
        thread.join()

    row(
        "threading.Thread() started and joined (for scale)",
        *paired(lambda: cpu_us(started, 1_000), hooks.enable, hooks.disable),
    )

    async def nothing() -> None:
        pass

    async def tasks(number: int) -> float:
        loop = asyncio.get_running_loop()
        start = time.process_time()
        for _ in range(number // 100):
            made = [loop.create_task(nothing()) for _ in range(100)]
            await asyncio.gather(*made)
        return (time.process_time() - start) / number * 1e6

    row(
        "loop.create_task() of a coroutine, run and gathered",
        *paired(lambda: asyncio.run(tasks(20_000)), hooks.enable, hooks.disable),
    )


def main() -> None:
    print(f"python {sys.version.split()[0]}, best of {ROUNDS} rounds, CPU time of this process")
    print(f"{'per operation (us)':<56} {'no hooks':>9} {'hooked':>9} {'added':>8} {'ratio':>7}")
    postgres, redis_server = servers.start_postgres(), servers.start_redis()
    try:
        bench_pools(postgres, redis_server)
    finally:
        postgres.stop()
        redis_server.stop()
    bench_creations()


if __name__ == "__main__":
    main()
