"""Limiters: capacity that changes under threads and tasks without overfilling or losing waiters."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

import pytest

from runtime_guard import Limiter, LimiterTimeout, Pressure, limiter
from runtime_guard.limiters import default_registry


class CapacityLog:
    """Capacity changes made under a lock, so a holder can bound what was allowed at entry.

    A holder reads ``start()`` before acquiring; every grant after that used a capacity
    from ``values[start:]``, and holders never exceed the capacity of the latest grant.
    """

    def __init__(self, lim: Limiter) -> None:
        self.lim = lim
        self.lock = threading.Lock()
        self.values = [lim.capacity]
        self.inside = 0
        self.peak = 0
        self.entries = 0
        self.violations: list[str] = []

    def change(self, capacity: int) -> None:
        with self.lock:
            self.values.append(capacity)
            self.lim.set_capacity(capacity)

    def start(self) -> int:
        with self.lock:
            return len(self.values) - 1

    def enter(self, start: int) -> None:
        with self.lock:
            self.inside += 1
            self.entries += 1
            self.peak = max(self.peak, self.inside)
            allowed = max(self.values[start:])
            if self.inside > allowed:
                self.violations.append(f"{self.inside} holders, capacity at most {allowed}")

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1

    def rounds(self, count: int) -> None:
        """Enter and leave the limiter ``count`` times from this thread."""
        for _ in range(count):
            start = self.start()
            with self.lim:
                self.enter(start)
                time.sleep(0)
                self.leave()

    async def rounds_async(self, count: int) -> None:
        """Enter and leave the limiter ``count`` times from this task."""
        for _ in range(count):
            start = self.start()
            async with self.lim:
                self.enter(start)
                await asyncio.sleep(0)
                self.leave()


def test_acquire_beyond_capacity_times_out_with_a_clear_error() -> None:
    """A full limiter makes the next caller wait, then raise LimiterTimeout naming it."""
    lim = Limiter("exports", 2, {})
    lim.acquire()
    lim.acquire()
    with pytest.raises(LimiterTimeout, match=r"limiter 'exports' is full.*capacity 2 of 2") as info:
        lim.acquire(timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert info.value.waited >= 0.04
    assert lim.waiters == 0, "a timed-out waiter leaves the queue"
    lim.release()
    lim.acquire(timeout=0.05)
    lim.release()
    lim.release()
    with pytest.raises(RuntimeError, match="released more often"):
        lim.release()


def test_default_timeout_comes_from_the_declaration() -> None:
    """limiter(..., timeout=) applies to `with` blocks that give none."""
    lim = limiter("reports", 1, timeout=0.05)
    with lim, pytest.raises(LimiterTimeout), lim:
        pass
    assert lim.holders == 0


def test_shrinking_keeps_holders_and_admits_newcomers_only_below_capacity() -> None:
    """Holders inside when capacity shrinks finish normally; the next one waits for room."""
    lim = Limiter("jobs", 4, {})
    for _ in range(3):
        lim.acquire()
    lim.set_capacity(1)
    assert lim.holders == 3 and lim.capacity == 1
    admitted = threading.Event()

    def newcomer() -> None:
        with lim:
            admitted.set()

    thread = threading.Thread(target=newcomer)
    thread.start()
    lim.release()
    lim.release()
    assert not admitted.wait(0.1), "two holders left, one still inside: capacity 1 is full"
    lim.release()
    assert admitted.wait(10)
    thread.join(10)
    assert lim.holders == 0


def test_growing_capacity_wakes_waiters_at_once() -> None:
    """Raising the capacity admits as many waiters as the new room allows."""
    lim = Limiter("grow", 1, {})
    lim.acquire()
    entered = threading.Semaphore(0)
    release = threading.Event()

    def waiter() -> None:
        with lim:
            entered.release()
            release.wait(10)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for thread in threads:
        thread.start()
    while lim.waiters < 3:
        time.sleep(0.001)
    lim.set_capacity(3)
    assert entered.acquire(timeout=10) and entered.acquire(timeout=10)
    assert not entered.acquire(timeout=0.05), "1 + 2 holders fill capacity 3"
    assert lim.holders == 3 and lim.waiters == 1
    lim.release()
    assert entered.acquire(timeout=10)
    release.set()
    for thread in threads:
        thread.join(10)
    assert lim.holders == 0


def test_fifty_threads_with_changing_capacity() -> None:
    """50 threads never exceed the capacity allowed at entry, and all finish (no lost wake-up)."""
    lim = Limiter("threads", 8, {})
    log = CapacityLog(lim)
    stop = threading.Event()
    rounds = 60

    def controller() -> None:
        rng = random.Random(5)
        while not stop.is_set():
            log.change(rng.choice([0, 1, 2, 3, 8, 12]))
            time.sleep(0.0005)
        log.change(8)

    workers = [threading.Thread(target=log.rounds, args=(rounds,)) for _ in range(50)]
    changer = threading.Thread(target=controller)
    changer.start()
    for thread in workers:
        thread.start()
    deadline = time.monotonic() + 120
    for thread in workers:
        thread.join(max(deadline - time.monotonic(), 0))
    stop.set()
    changer.join(10)
    for thread in workers:  # a waiter stuck at capacity 0 gets in once it is 8 again
        thread.join(max(deadline - time.monotonic(), 0))
    assert not any(thread.is_alive() for thread in workers), "a thread never got its slot"
    assert log.violations == []
    assert log.entries == 50 * rounds
    assert log.peak <= 12
    assert (lim.holders, lim.waiters) == (0, 0)


@pytest.mark.asyncio
async def test_five_hundred_tasks_with_capacity_changed_from_another_thread() -> None:
    """500 tasks respect the capacity at entry while a thread and a task resize the limiter."""
    lim = Limiter("tasks", 10, {})
    log = CapacityLog(lim)
    stop = threading.Event()

    def thread_controller() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            log.change(rng.choice([1, 2, 5, 10, 20]))
            time.sleep(0.0005)

    async def task_controller() -> None:
        while not stop.is_set():
            log.change(random.choice([0, 3, 10]))
            await asyncio.sleep(0.001)

    changer = threading.Thread(target=thread_controller)
    changer.start()
    in_loop = asyncio.ensure_future(task_controller())
    try:
        async with asyncio.timeout(120):
            workers = [asyncio.ensure_future(log.rounds_async(4)) for _ in range(500)]
            await asyncio.wait(workers, timeout=60)
            stop.set()
            await in_loop
            changer.join(10)
            log.change(10)
            await asyncio.gather(*workers)
    finally:
        stop.set()
        changer.join(10)
    assert log.violations == []
    assert log.entries == 500 * 4
    assert (lim.holders, lim.waiters) == (0, 0)


def test_threads_and_tasks_share_one_limiter() -> None:
    """Threads and tasks of two loops take turns in one limiter without exceeding it."""
    lim = Limiter("mixed", 3, {})
    log = CapacityLog(lim)

    async def many_tasks() -> None:
        await asyncio.gather(*(log.rounds_async(10) for _ in range(50)))

    threads = [threading.Thread(target=log.rounds, args=(30,)) for _ in range(10)]
    threads += [threading.Thread(target=asyncio.run, args=(many_tasks(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for _ in range(20):
        log.change(random.choice([1, 2, 3]))
        time.sleep(0.002)
    log.change(3)
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert log.violations == []
    assert log.entries == 10 * 30 + 2 * 50 * 10
    assert (lim.holders, lim.waiters) == (0, 0)


@pytest.mark.asyncio
async def test_async_timeout_and_cancellation_lose_no_slot() -> None:
    """A timed-out or cancelled task, even one just handed a slot, leaves the count right."""
    lim = Limiter("cancel", 1, {})
    await lim.acquire_async()
    with pytest.raises(LimiterTimeout, match="'cancel'"):
        await lim.acquire_async(timeout=0.02)
    waiting = asyncio.ensure_future(lim.acquire_async())
    await asyncio.sleep(0)
    assert lim.waiters == 1
    lim.release()  # hands the slot to the waiting task...
    waiting.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (lim.holders, lim.waiters) == (0, 0)
    async with lim:
        assert lim.holders == 1
        other = asyncio.ensure_future(lim.acquire_async())
        await asyncio.sleep(0)
        assert lim.waiters == 1
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
    assert (lim.holders, lim.waiters) == (0, 0)


def test_capacity_for_each_level_and_declaration_rules() -> None:
    """Capacity is the strictest level reached, never above the limit; bad input is refused."""
    lim = limiter("levels", 10, at={"elevated": 6, "critical": 1, Pressure.HIGH: 3})
    assert [lim.capacity_for(level) for level in Pressure] == [10, 6, 3, 1]
    default = limiter("default", 2)
    assert [default.capacity_for(level) for level in Pressure] == [2, 2, 2, 1]
    assert limiter("levels", 10, at={"elevated": 6, "high": 3, "critical": 1}) is lim
    with pytest.raises(ValueError, match="already declared"):
        limiter("levels", 5)
    with pytest.raises(ValueError, match="limit"):
        limiter("bad", 0)
    with pytest.raises(ValueError, match="at='ok' is not accepted"):
        limiter("bad", 3, at={"ok": 1})
    with pytest.raises(ValueError, match=">= 0"):
        limiter("bad", 3, at={"high": -1})
    assert "capacity=10/10" in repr(lim)


def test_a_limiter_declared_under_pressure_starts_narrow() -> None:
    """A limiter declared while pressure is HIGH gets its HIGH capacity at once."""
    default_registry.apply_pressure(Pressure.HIGH, False)
    assert limiter("late", 8, at={"high": 2}).capacity == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_child_does_not_inherit_other_threads_slots() -> None:
    """In a forked child, slots held by the parent's other threads are free again."""
    lim = limiter("fork", 1, {})
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        with lim:
            held.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            lim.acquire(timeout=2)
            lim.release()
            os._exit(0)
        except BaseException:
            os._exit(1)
    done.set()
    thread.join(10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
