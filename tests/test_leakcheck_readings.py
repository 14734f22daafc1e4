"""The cheap readings an untraced round is judged on, and the other threads' state."""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime_guard._leakcheck import readings


def test_descriptors_are_counted_and_named_from_the_fd_directory(tmp_path: Path) -> None:
    """A /proc/self/fd-like directory gives the count and each descriptor's target."""
    fd_dir = tmp_path / "fd"
    fd_dir.mkdir()
    os.symlink("/var/log/app.log", fd_dir / "3")
    os.symlink("socket:[4242]", fd_dir / "7")
    (fd_dir / "not-a-number").write_text("")
    assert readings.fd_count(str(fd_dir)) == 3
    assert sorted(readings.fd_numbers(str(fd_dir))) == [3, 7]
    assert readings.fd_targets(fd_dir=str(fd_dir)) == {3: "/var/log/app.log", 7: "socket:[4242]"}
    assert readings.fd_targets({7}, fd_dir=str(fd_dir)) == {7: "socket:[4242]"}


def test_a_missing_fd_directory_reads_as_nothing(tmp_path: Path) -> None:
    """Where the listing is unavailable the figures are empty, never an error."""
    missing = str(tmp_path / "absent")
    assert readings.fd_count(missing) == 0
    assert readings.fd_numbers(missing) == []
    assert readings.fd_targets(fd_dir=missing) == {}


def test_the_real_fd_directory_sees_a_file_opened_here(tmp_path: Path) -> None:
    """Opening a file adds one descriptor, named by its path."""
    before = readings.fd_count()
    with open(tmp_path / "open.txt", "w") as handle:
        assert readings.fd_count() == before + 1
        assert readings.fd_targets({handle.fileno()}) == {
            handle.fileno(): str(tmp_path / "open.txt")
        }


def test_malloc_bytes_follow_a_large_allocation_and_its_release() -> None:
    """malloc's bytes in use rise by a buffer beyond pymalloc's reach and fall when it goes."""
    read = readings.malloc_reader()
    if read is None:
        pytest.skip("no mallinfo2 here (not glibc 2.33+): every round is traced instead")
    before = read()
    buffer = bytearray(4 * 1024 * 1024)
    during = read()
    del buffer
    after = read()
    assert during - before >= 4 * 1024 * 1024
    assert during - after >= 4 * 1024 * 1024


def test_no_reader_where_the_c_library_has_no_mallinfo2(monkeypatch: pytest.MonkeyPatch) -> None:
    """A C library without mallinfo2 gives no reader instead of an error."""

    class NoMallinfo:
        def __init__(self, name: object) -> None:
            pass

        def __getattr__(self, name: str) -> object:
            raise AttributeError(name)

    monkeypatch.setattr(ctypes, "CDLL", NoMallinfo)
    assert readings.malloc_reader() is None


def test_live_threads_are_counted_while_they_run() -> None:
    """A thread started from Python counts until it ends."""
    stop = threading.Event()
    before = readings.thread_count()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        assert readings.thread_count() == before + 1
        assert (worker.ident, worker.native_id) in readings.other_threads()
    finally:
        stop.set()
        worker.join()
    assert readings.thread_count() == before


def test_pending_tasks_are_found_in_any_event_loop_between_runs() -> None:
    """Tasks left pending by a loop that is not running are found; done ones are not."""

    async def start() -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(3600))
        await asyncio.create_task(asyncio.sleep(0))

    with asyncio.Runner() as runner:
        before = len(readings.pending_tasks())
        runner.run(start())
        assert len(readings.pending_tasks()) == before + 1


def test_a_thread_at_work_moves_its_cpu_clock_and_a_sleeping_one_does_not() -> None:
    """The CPU clocks of other threads tell which of them ran."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    busy = threading.Thread(target=spin)
    idle = threading.Thread(target=stop.wait)
    busy.start()
    idle.start()
    try:
        threads = [(busy.ident, busy.native_id), (idle.ident, idle.native_id)]
        time.sleep(0.05)  # the idle one's start-up done: it waits from then on
        first = readings.cpu_clocks(threads)  # type: ignore[arg-type]
        time.sleep(0.05)
        second = readings.cpu_clocks(threads)  # type: ignore[arg-type]
        assert second[0] > first[0] and second[1] == first[1]
    finally:
        stop.set()
        busy.join()
        idle.join()


_ENDED_THREADS = """
import threading, time
from runtime_guard._leakcheck import readings

# Stacks larger than glibc keeps cached: each ended thread's stack, and the pthread
# structure at its top, is unmapped.
threading.stack_size(64 * 1024 * 1024)
ended = []
for _ in range(4):
    thread = threading.Thread(target=sum, args=((),))
    thread.start()
    thread.join()
    ended.append((thread.ident, thread.native_id))
time.sleep(0.1)
print(readings.cpu_clocks(ended))
"""


def test_the_clock_of_a_thread_that_ended_reads_as_ended_without_crashing() -> None:
    """Asking for the CPU clock of threads that ended (their pthread structures freed and
    unmapped) gives -1 for each, and never crashes the process."""
    done = subprocess.run(
        [sys.executable, "-c", _ENDED_THREADS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(-1, -1, -1, -1)"


def test_runnable_reads_the_run_state_of_each_thread(tmp_path: Path) -> None:
    """A thread in state R or D is about to run; asleep (S) it is not; a gone one is not."""
    for native, state in ((11, "S"), (12, "R"), (13, "D")):
        (tmp_path / str(native)).mkdir()
        (tmp_path / str(native) / "stat").write_text(f"{native} (worker (1)) {state} 1 2 3\n")
    task_dir = str(tmp_path)
    assert not readings.runnable([(1, 11)], task_dir)
    assert readings.runnable([(1, 11), (2, 12)], task_dir)
    assert readings.runnable([(3, 13)], task_dir)
    assert not readings.runnable([(4, 99), (5, None)], task_dir)
