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

NUMBER = 1_000_000
REPEAT = 7
ASYNC_NUMBER = 200_000


def best(statement: str, namespace: dict[str, Any], number: int = NUMBER) -> float:
    """Nanoseconds per execution of ``statement``, best of ``REPEAT`` runs."""
    runs = timeit.repeat(statement, globals=namespace, number=number, repeat=REPEAT)
    return min(runs) / number * 1e9


def best_async(body: Callable[[int], Awaitable[None]], number: int = ASYNC_NUMBER) -> float:
    """Nanoseconds per iteration of ``body(number)`` run in a fresh loop, best of ``REPEAT``."""
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        asyncio.run(body(number))
        times.append(time.perf_counter() - start)
    return min(times) / number * 1e9


def row(label: str, value: float, baseline: float | None = None) -> None:
    ratio = f"{value / baseline:5.2f}x" if baseline else "  base"
    print(f"  {label:<44} {value:8.1f} ns  {ratio}")


def _nothing(name: str) -> None:
    pass


def bench_enabled() -> None:
    feature("websockets")
    feature("analytics")
    _shed.add("analytics")  # as if shed: the lookup cost is the same either way
    plain = {"analytics"}
    namespace = {"enabled": enabled, "plain": plain, "name": "websockets", "nothing": _nothing}
    print("enabled(name), a feature that is on (the common case):")
    base = best("name not in plain", namespace)
    row("plain set lookup: name not in plain", base)
    row("enabled(name)", best("enabled(name)", namespace), base)
    # What any function-call API costs over an inline expression, for scale.
    row("call of an empty one-argument function", best("nothing(name)", namespace), base)
    namespace["name"] = "analytics"
    row("enabled(name), feature shed", best("enabled(name)", namespace), base)
    namespace["name"] = "undeclared"
    row("enabled(name), name never declared", best("enabled(name)", namespace), base)
    _shed.discard("analytics")


def bench_threads() -> None:
    lim = Limiter("bench", 8, {})
    sem = threading.Semaphore(8)
    namespace = {"lim": lim, "sem": sem}
    print("acquire/release, uncontended, one thread:")
    base = best("with sem: pass", namespace)
    row("threading.Semaphore: with sem", base)
    row("Limiter: with lim", best("with lim: pass", namespace), base)
    row("Limiter: acquire() + release()", best("lim.acquire(); lim.release()", namespace), base)


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
    print("acquire/release, uncontended, one task:")
    base = best_async(_semaphore_loop)
    row("asyncio.Semaphore: async with sem", base)
    row("Limiter: async with lim", best_async(_limiter_loop), base)
    print("acquire/release, 20 tasks on 4 slots (each holder yields once):")
    contended = 50_000
    base = best_async(lambda n: _contended(lambda: asyncio.Semaphore(4), n), contended)
    row("asyncio.Semaphore", base)
    limited = best_async(lambda n: _contended(lambda: Limiter("c", 4, {}), n), contended)
    row("Limiter", limited, base)


def main() -> None:
    parts = {"enabled": bench_enabled, "threads": bench_threads, "async": bench_async}
    chosen = sys.argv[1:] or list(parts)
    for name in chosen:
        parts[name]()


if __name__ == "__main__":
    main()
