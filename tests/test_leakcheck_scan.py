"""The leak check's scan of other threads: what their running library calls made is theirs."""

from __future__ import annotations

import _tracemalloc
import linecache
import queue
import sys
import threading
import time
import tracemalloc
import types
from collections.abc import Iterator

import pytest

from runtime_guard._leakcheck import scan

KEPT: list[str] = []


def _watch(updates: queue.Queue[str], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            updates.get(timeout=0.002)
        except queue.Empty:
            continue


def _consume(items: queue.Queue[int]) -> None:
    while True:
        item = items.get()
        KEPT.append(f"kept {item:08d} " * 4)
        items.task_done()


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start(4)
    try:
        yield
    finally:
        tracemalloc.stop()


def _made_at(calls: scan.InFlight, filename: str, text: str) -> list[bool]:
    """For each live trace whose innermost frame is in ``filename`` at a line containing
    ``text``: whether it was made in flight."""
    return [
        scan._made_in_flight(trace[2], calls)
        for trace in _tracemalloc._get_traces()
        if trace[2][0][0] == filename and text in linecache.getline(filename, trace[2][0][1])
    ]


def test_waits_of_other_threads_are_in_flight_and_what_user_code_kept_is_not(
    traced: None,
) -> None:
    """The waiter locks and deadlines of threads waiting in ``queue.get(timeout=...)``, and
    the frame objects of their loops, are in flight; strings a consumer thread's own loop
    kept, and this thread's own allocations, are not."""
    stop = threading.Event()
    watchers = [
        threading.Thread(target=_watch, args=(queue.Queue(), stop), daemon=True) for _ in range(4)
    ]
    items: queue.Queue[int] = queue.Queue()
    threading.Thread(target=_consume, args=(items,), daemon=True).start()
    try:
        for watcher in watchers:
            watcher.start()
        for n in range(20):
            items.put(n)
        items.join()
        time.sleep(0.05)
        mine = [object() for _ in range(50)]
        calls = scan.in_flight_calls(tracemalloc.get_traceback_limit())
        waits = [
            scan._made_in_flight(trace[2], calls)
            for trace in _tracemalloc._get_traces()
            if trace[2][0][0] == threading.__file__
            and len(trace[2]) > 1
            and trace[2][1][0] == queue.__file__
        ]
        # The frame objects of the watchers' loops: made by the first queue.Empty, or by a
        # tracer (coverage) when the loop began; either way traced, and theirs.
        frames = sys._current_frames()
        loops = []
        for watcher in watchers:
            frame: types.FrameType | None = frames[watcher.ident or 0]
            while frame is not None and frame.f_code is not _watch.__code__:
                frame = frame.f_back
            assert frame is not None
            made = _tracemalloc._get_object_traceback(frame)
            assert made is not None
            loops.append(scan._made_in_flight(made, calls))
        kept = _made_at(calls, __file__, "KEPT.append")
        own = _made_at(calls, __file__, "mine = ")
        assert waits and any(waits)
        assert all(loops)
        assert len(kept) >= 20 and not any(kept)
        assert own and not any(own)
        blocks, size = scan.kept_apart_from(calls)
        everything = [t for t in _tracemalloc._get_traces() if not scan.machinery(t[2])]
        assert blocks < sum(trace[1] <= 512 for trace in everything)
        assert size >= sum(len(s) for s in KEPT[-20:])
        del mine
    finally:
        stop.set()
        for watcher in watchers:
            watcher.join()


def test_without_frames_beyond_the_allocation_nothing_is_in_flight(traced: None) -> None:
    """Traced one frame deep, no allocation can be told to be a running call's."""
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(queue.Queue(), stop), daemon=True)
    watcher.start()
    try:
        time.sleep(0.02)
        assert scan.in_flight_calls(1) == frozenset()
    finally:
        stop.set()
        watcher.join()
