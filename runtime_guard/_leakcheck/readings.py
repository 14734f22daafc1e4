"""Cheap readings taken between rounds, and the state of the process's other threads.

None of them starts tracemalloc; they are what an untraced round is judged on: open
descriptors, the C allocator's bytes in use, live threads, pending asyncio tasks. The
other threads' CPU clocks (by their kernel ids) and run states (``/proc``) tell when
they are idle, so that a reading is not taken in the middle of their work.
"""

from __future__ import annotations

import _thread
import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable

__all__ = [
    "MallocReader",
    "cpu_clocks",
    "fd_count",
    "fd_numbers",
    "fd_targets",
    "malloc_reader",
    "other_threads",
    "pending_tasks",
    "runnable",
    "thread_count",
]

MallocReader = Callable[[], int]
"""Returns the bytes the C allocator has handed out and not had back."""

_FD_DIR = "/proc/self/fd"


def fd_count(fd_dir: str = _FD_DIR) -> int:
    """Open descriptors (``/proc/self/fd``); 0 where that listing is unavailable."""
    try:
        # The listing's own descriptor is counted too, in every reading alike.
        return len(os.listdir(fd_dir))
    except OSError:
        return 0


def fd_numbers(fd_dir: str = _FD_DIR) -> list[int]:
    """The open descriptors' numbers; empty where the listing is unavailable."""
    try:
        return [int(name) for name in os.listdir(fd_dir) if name.isdecimal()]
    except OSError:
        return []


def fd_targets(fds: set[int] | None = None, fd_dir: str = _FD_DIR) -> dict[int, str]:
    """What the open descriptors (only ``fds``, when given) point at; empty where unknown."""
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return {}
    found: dict[int, str] = {}
    for name in names:
        if not name.isdecimal() or (fds is not None and int(name) not in fds):
            continue
        try:
            found[int(name)] = os.readlink(os.path.join(fd_dir, name))
        except OSError:  # the listing's own descriptor is gone already
            continue
    return found


class _Mallinfo2(ctypes.Structure):
    # glibc's struct mallinfo2 (2.33+): the same fields as mallinfo, as size_t.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def malloc_reader() -> MallocReader | None:
    """A reader of glibc's bytes in use (``mallinfo2``), or None where there is none.

    Heap chunks in use (``uordblks``) plus mmapped ones (``hblkhd``), over every arena. It
    sees what ``sys.getallocatedblocks()`` cannot: the size of allocations above pymalloc's
    512 bytes (a buffer, a list's item array), which pymalloc hands to malloc. Measured: 36
    us a call, where a tracemalloc reading needs tracemalloc running (3-12x slower bodies).
    """
    try:
        # The process's own symbols, libc's among them: ctypes.util.find_library would run
        # ldconfig in a subprocess for the same answer.
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc, or glibc before 2.33
        return None
    function.restype = _Mallinfo2
    function.argtypes = []

    def read() -> int:
        info = function()
        return int(info.uordblks) + int(info.hblkhd)

    try:
        read()
    except Exception:  # a mallinfo2 that cannot be called is no reader
        return None
    return read


def thread_count() -> int:
    """Threads started from Python (``threading`` or ``_thread``) and still running."""
    return int(_thread._count())


def pending_tasks() -> list[object]:
    """asyncio tasks not done yet, in every event loop (none before asyncio is imported).

    Read from asyncio's own registry of tasks (``asyncio.tasks``: ``_all_tasks`` on 3.11,
    ``_scheduled_tasks`` and ``_eager_tasks`` from 3.12), which ``asyncio.all_tasks()``
    reads too but for one running loop only; between two runs of a test body no loop runs.
    """
    module = sys.modules.get("asyncio.tasks")
    if module is None:
        return []
    found: list[object] = []
    for name in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):
        registry = getattr(module, name, None)
        if registry is None:
            continue
        while True:
            try:
                found.extend(registry)
                break
            except RuntimeError:  # changed size while read by another thread's loop
                found.clear()
    return [task for task in found if not _done(task)]


def _done(task: object) -> bool:
    try:
        return bool(task.done())  # type: ignore[attr-defined]
    except Exception:  # not a task after all: count it as done
        return True


_TASK_DIR = "/proc/self/task"

_LINUX = sys.platform.startswith("linux")


def other_threads() -> list[tuple[int, int | None]]:
    """The other Python threads of the process: ``(ident, native id)`` of each.

    Only threads that run Python code can make Python objects; threads of C libraries
    (OpenBLAS's workers, a driver's I/O thread) are left out.
    """
    me = threading.get_ident()
    found = []
    for registry in (threading._active, threading._limbo):  # type: ignore[attr-defined]
        for ident, thread in list(registry.items()):
            if ident != me:
                found.append((ident, getattr(thread, "native_id", None)))
    return found


def _thread_clock(native: int) -> int:
    """The CPU clock of the thread whose kernel id is ``native``: Linux's encoding of a
    per-thread scheduler clock (what glibc's ``pthread_getcpuclockid`` returns)."""
    return (~native << 3) | 6


def cpu_clocks(threads: list[tuple[int, int | None]]) -> tuple[int, ...]:
    """Each thread's CPU time in nanoseconds (-1 for one that has ended).

    On Linux the clock is named by the thread's kernel id: once the thread has ended, the
    kernel answers EINVAL. ``pthread_getcpuclockid`` reads the id out of the thread's
    pthread structure, which a thread that ended detached (every Python thread before
    3.13) has freed: a thread ending while its clock was asked for crashed the process.
    """
    clocks = []
    for ident, native in threads:
        try:
            if _LINUX:
                clock = -1 if native is None else time.clock_gettime_ns(_thread_clock(native))
            else:
                clock = time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
        except (OSError, OverflowError, AttributeError):
            clock = -1
        clocks.append(clock)
    return tuple(clocks)


def runnable(threads: list[tuple[int, int | None]], task_dir: str = _TASK_DIR) -> bool:
    """True when one of the threads is runnable (``R``) or in an uninterruptible wait (``D``)
    right now: about to run, though its CPU clock has not moved yet."""
    for _, native in threads:
        if native is None:
            continue
        try:
            with open(f"{task_dir}/{native}/stat", "rb") as stat:
                line = stat.read()
        except OSError:  # ended meanwhile, or no /proc
            continue
        at = line.rfind(b")")
        if line[at + 2 : at + 3] in (b"R", b"D"):
            return True
    return False
