"""Cost of sampling: one Guard.sample() beside a psutil RSS read, and the sampler's CPU share.

Run: ``python benchmarks/bench_sampling.py [--seconds N]``. Prints figures only; the
targets (a sample no dearer than psutil's RSS read, under 0.01 % of a core at 1 s) are
judged by reading them. The figures that are not bytes (threads, asyncio tasks, file
descriptors, loop lag) are read by ``RuntimeProbe``: its own cost is printed too, and a
sample with a watched event loop, 20 pending tasks and three pools with checkouts out.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import psutil

import runtime_guard
from runtime_guard import Guard
from runtime_guard._install import attach_components
from runtime_guard.config import Config
from runtime_guard.probes import RuntimeProbe


def median_ns(fn: Callable[[], object], rounds: int = 31, per_round: int = 2000) -> float:
    """Median over rounds of the mean time of one call, in nanoseconds."""
    means = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(per_round):
            fn()
        means.append((time.perf_counter_ns() - start) / per_round)
    return statistics.median(means)


def cold_us(fn: Callable[[], object], calls: int = 15, gap: float = 0.2) -> float:
    """Median time of one call made after sleeping ``gap`` s, as the sampler makes it."""
    times = []
    for _ in range(calls):
        time.sleep(gap)
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(times)


def thread_cpu_ns(native_id: int) -> int:
    """On-CPU nanoseconds of one thread, from the scheduler's own accounting."""
    with open(f"/proc/self/task/{native_id}/schedstat") as f:
        return int(f.read().split()[0])


def sampler_share(interval: float, seconds: float) -> tuple[float, int]:
    """Run the installed guard for ``seconds``; return its thread's CPU share and samples."""
    guard = runtime_guard.install(interval=interval)
    thread = guard._thread
    assert thread is not None
    assert thread.native_id is not None
    cpu0, wall0, n0 = thread_cpu_ns(thread.native_id), time.monotonic_ns(), len(guard.history)
    time.sleep(seconds)
    cpu1, wall1, n1 = thread_cpu_ns(thread.native_id), time.monotonic_ns(), len(guard.history)
    runtime_guard.uninstall()
    return (cpu1 - cpu0) / (wall1 - wall0), n1 - n0


def idle_share(interval: float, seconds: float) -> float:
    """CPU share of a thread that only wakes at ``interval``: the floor for any sampler."""
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [stop.wait(interval) for _ in iter(stop.is_set, True)])
    thread.start()
    assert thread.native_id is not None
    cpu0, wall0 = thread_cpu_ns(thread.native_id), time.monotonic_ns()
    time.sleep(seconds)
    cpu1, wall1 = thread_cpu_ns(thread.native_id), time.monotonic_ns()
    stop.set()
    thread.join()
    return (cpu1 - cpu0) / (wall1 - wall0)


def busy_sample_ns(guard: Guard) -> float:
    """A sample while a loop runs with 20 pending tasks and three pools have checkouts out
    (sqlite3 through SQLAlchemy, and two redis-py pools on a real redis-server)."""
    import asyncio
    import os
    import sys
    import tempfile

    import redis
    import sqlalchemy

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import servers  # tests/servers.py: the real servers the tests use

    result: list[float] = []

    async def run() -> None:
        stop = asyncio.Event()
        waiting = [asyncio.create_task(stop.wait()) for _ in range(20)]
        await asyncio.sleep(0.3)  # the loop is watched from its first ticks
        result.append(median_ns(guard.sample, rounds=11, per_round=300))
        stop.set()
        await asyncio.gather(*waiting)

    server = servers.start_redis()
    with tempfile.TemporaryDirectory() as directory:
        engine = sqlalchemy.create_engine(
            f"sqlite:///{directory}/bench.db", poolclass=sqlalchemy.pool.QueuePool
        )
        held = [engine.pool.connect() for _ in range(3)]
        pools = [redis.ConnectionPool.from_url(f"{server.url[:-2]}/{db}") for db in (1, 2)]
        taken = [pool.get_connection() for pool in pools for _ in range(3)]
        asyncio.run(run())
        for connection in held:
            connection.close()
        for index, connection in enumerate(taken):
            pools[index // 3].release(connection)
        engine.dispose()
    server.stop()
    return result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="run time at interval 1 s")
    args = parser.parse_args()

    process = psutil.Process()
    bare = Guard(Config.from_options({}, environ={}))
    full = Guard(Config.from_options({}, environ={}))
    attach_components(full)
    psutil_ns = median_ns(lambda: process.memory_info().rss)
    runtime_ns = median_ns(RuntimeProbe().read)
    bare_ns = median_ns(bare.sample)
    full_ns = median_ns(full.sample, rounds=11, per_round=500)
    psutil_cold, full_cold = cold_us(lambda: process.memory_info().rss), cold_us(full.sample)
    bare.stop()
    full.stop()
    print("one sample (median of means, same run)")
    print(f"  psutil.Process().memory_info()   {psutil_ns / 1000:8.2f} us   1.00x (baseline)")
    print(
        f"  Guard.sample(), no components    {bare_ns / 1000:8.2f} us   {bare_ns / psutil_ns:.2f}x"
    )
    print(
        f"  Guard.sample(), all components   {full_ns / 1000:8.2f} us   {full_ns / psutil_ns:.2f}x"
    )
    print(
        f"    of which RuntimeProbe.read()   {runtime_ns / 1000:8.2f} us   "
        f"{runtime_ns / psutil_ns:.2f}x  (threads, tasks, fds, loop lag)"
    )
    print("one call after 0.2 s asleep (caches cold, as in the sampler; median of 15)")
    print(f"  psutil.Process().memory_info()   {psutil_cold:8.2f} us   1.00x (baseline)")
    print(
        f"  Guard.sample(), all components   {full_cold:8.2f} us   {full_cold / psutil_cold:.2f}x"
    )
    print("sampler thread CPU share (installed guard, all components, from schedstat)")
    for interval, seconds in ((1.0, args.seconds), (0.1, args.seconds / 3)):
        idle = idle_share(interval, seconds)
        share, samples = sampler_share(interval, seconds)
        print(
            f"  interval {interval:>4} s: {share * 100:.5f} % of a core "
            f"over {seconds:.0f} s ({samples} samples); a thread that only wakes: "
            f"{idle * 100:.5f} %"
        )
    # Last: it imports SQLAlchemy and redis-py, whose classes the guard then tracks.
    busy = Guard(Config.from_options({}, environ={}))
    attach_components(busy)
    busy_ns = busy_sample_ns(busy)
    busy.stop()
    print("one sample of a busy process (a watched loop, 20 tasks, 3 pools with checkouts out)")
    print(
        f"  Guard.sample(), all components   {busy_ns / 1000:8.2f} us   {busy_ns / psutil_ns:.2f}x"
    )


if __name__ == "__main__":
    main()
