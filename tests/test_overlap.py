"""no_overlap: a call that would overlap the running one is skipped and signalled."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import runtime_guard
from runtime_guard import no_overlap, signals


@pytest.fixture
def skipped() -> Iterator[list[tuple[Any, str]]]:
    got: list[tuple[Any, str]] = []
    lock = threading.Lock()

    def receiver(sender: Any, task: str) -> None:
        with lock:
            got.append((sender, task))

    signals.overlap_skipped.connect(receiver)
    yield got
    signals.overlap_skipped.disconnect(receiver)


def test_concurrent_thread_callers_run_one_at_a_time(skipped: list[tuple[Any, str]]) -> None:
    """Of 20 threads calling at once while a run is under way, none runs; each is signalled."""
    guard = runtime_guard.install(interval=60)
    started, finish = threading.Event(), threading.Event()
    runs: list[int] = []

    @no_overlap
    def job(n: int) -> str:
        runs.append(n)
        started.set()
        finish.wait(10)
        return "done"

    results: dict[int, str | None] = {}
    first = threading.Thread(target=lambda: results.__setitem__(0, job(0)))
    first.start()
    assert started.wait(10)
    barrier = threading.Barrier(20)

    def call(n: int) -> None:
        barrier.wait(10)
        results[n] = job(n)

    callers = [threading.Thread(target=call, args=(n,)) for n in range(1, 21)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(10)
    finish.set()
    first.join(10)
    assert runs == [0]
    assert results[0] == "done"
    assert all(results[n] is None for n in range(1, 21))
    guard.flush_signals()
    task = f"{__name__}.test_concurrent_thread_callers_run_one_at_a_time.<locals>.job"
    assert skipped == [(guard, task)] * 20
    assert job(21) == "done", "once the run ends the next call runs"


@pytest.mark.asyncio
async def test_concurrent_tasks_run_one_at_a_time(skipped: list[tuple[Any, str]]) -> None:
    """Of 50 tasks started together, one runs the async job; the others get None at once."""
    gate = asyncio.Event()
    runs = 0

    @no_overlap(name="refresh")
    async def refresh() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return runs

    tasks = [asyncio.ensure_future(refresh()) for _ in range(50)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert runs == 1
    assert sorted(results, key=lambda r: r is None) == [1] + [None] * 49
    assert skipped == [(None, "refresh")] * 49, "with no guard the sender is None"
    assert await refresh() == 2


def test_a_raising_run_does_not_block_the_next(skipped: list[tuple[Any, str]]) -> None:
    """An exception from the job propagates and the next call runs normally."""
    calls = 0

    @no_overlap
    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first run fails")
        return calls

    with pytest.raises(RuntimeError):
        flaky()
    assert flaky() == 2
    assert skipped == []
    assert flaky.__name__ == "flaky"


def test_a_recursive_call_is_an_overlap(skipped: list[tuple[Any, str]]) -> None:
    """A job that calls itself while running is skipped too: one run at a time, always."""

    @no_overlap(name="tick")
    def tick(depth: int) -> str:
        inner = tick(depth + 1) if depth == 0 else "inner ran"
        return f"outer, inner={inner}"

    assert tick(0) == "outer, inner=None"
    assert skipped == [(None, "tick")]
