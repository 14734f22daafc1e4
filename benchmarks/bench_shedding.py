"""Cost of the shedding hot paths beside their plain baselines, measured in the same run.

    python benchmarks/bench_shedding.py

Prints nanoseconds per operation (best of several repeats) and the ratio to the baseline:
``enabled(name)`` against a plain set lookup, and a ``Limiter`` acquire/release against
``threading.Semaphore`` (threads) and ``asyncio.Semaphore`` (tasks). Targets: within 2x.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any

from runtime_guard import Limiter, enabled, feature
from runtime_guard.shedding import _shed

NUMBER = 500_000
REPEAT = 9
ASYNC_NUMBER = 100_000


def compare(title: str, statements: list[tuple[str, str]], namespace: dict[str, Any]) -> None:
    """Time each statement, best of ``REPEAT``; the first is the baseline.

    Runs are interleaved (one of each per round) so that load from other processes on a
    shared machine falls on every statement alike and the ratios stay fair.
    """
    timers = [timeit.Timer(statement, globals=namespace) for _, statement in statements]
    best = [float("inf")] * len(timers)
    for _ in range(REPEAT):
        for index, timer in enumerate(timers):
            best[index] = min(best[index], timer.timeit(NUMBER) / NUMBER * 1e9)
    report(title, [label for label, _ in statements], best)


def compare_async(
    title: str, bodies: list[tuple[str, Callable[[int], Awaitable[None]]]], number: int
) -> None:
    """Like :func:`compare` for coroutines: each body runs ``number`` iterations in a loop."""
    best = [float("inf")] * len(bodies)
    for _ in range(REPEAT):
        for index, (_, body) in enumerate(bodies):
            start = time.perf_counter()
            asyncio.run(body(number))
            best[index] = min(best[index], (time.perf_counter() - start) / number * 1e9)
    report(title, [label for label, _ in bodies], best)


def report(title: str, labels: list[str], values: list[float]) -> None:
    print(title)
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        ratio = "  base" if index == 0 else f"{value / values[0]:5.2f}x"
        print(f"  {label:<44} {value:8.1f} ns  {ratio}")


def _nothing(name: str) -> None:
    pass


def bench_enabled() -> None:
    feature("websockets")
    feature("analytics")
    _shed.add("analytics")  # as if shed by pressure
    namespace = {
        "enabled": enabled,
        "nothing": _nothing,
        "plain": {"analytics"},
        "on": "websockets",
        "off": "analytics",
        "undeclared": "undeclared",
    }
    compare(
        "enabled(name) beside a plain set lookup:",
        [
            ("plain set lookup: name not in plain", "on not in plain"),
            ("enabled(name), feature on", "enabled(on)"),
            ("enabled(name), feature shed", "enabled(off)"),
            ("enabled(name), name never declared", "enabled(undeclared)"),
            # What any function-call API costs over an inline expression, for scale.
            ("call of an empty one-argument function", "nothing(on)"),
        ],
        namespace,
    )
    _shed.discard("analytics")


def bench_threads() -> None:
    namespace = {"lim": Limiter("bench", 8, {}), "sem": threading.Semaphore(8)}
    compare(
        "acquire/release, uncontended, one thread:",
        [
            ("threading.Semaphore: with sem", "with sem: pass"),
            ("Limiter: with lim", "with lim: pass"),
            ("Limiter: acquire() + release()", "lim.acquire(); lim.release()"),
        ],
        namespace,
    )


async def _semaphore_loop(number: int) -> None:
    sem = asyncio.Semaphore(8)
    for _ in range(number):
        async with sem:
            pass


async def _limiter_loop(number: int) -> None:
    lim = Limiter("bench-async", 8, {})
    for _ in range(number):
        async with lim:
            pass


async def _contended(make: Callable[[], Any], number: int) -> None:
    gate = make()

    async def worker(rounds: int) -> None:
        for _ in range(rounds):
            async with gate:
                await asyncio.sleep(0)

    await asyncio.gather(*(worker(number // 20) for _ in range(20)))


def bench_async() -> None:
    compare_async(
        "acquire/release, uncontended, one task:",
        [
            ("asyncio.Semaphore: async with sem", _semaphore_loop),
            ("Limiter: async with lim", _limiter_loop),
        ],
        ASYNC_NUMBER,
    )
    compare_async(
        "acquire/release, 20 tasks on 4 slots (each holder yields once):",
        [
            ("asyncio.Semaphore", lambda n: _contended(lambda: asyncio.Semaphore(4), n)),
            ("Limiter", lambda n: _contended(lambda: Limiter("c", 4, {}), n)),
        ],
        ASYNC_NUMBER // 4,
    )


def main() -> None:
    parts = {"enabled": bench_enabled, "threads": bench_threads, "async": bench_async}
    chosen = sys.argv[1:] or list(parts)
    for name in chosen:
        parts[name]()


if __name__ == "__main__":
    main()
