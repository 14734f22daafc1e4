"""Cheap readings taken between rounds: open descriptors and the C allocator's bytes in use.

None of them starts tracemalloc; they are what an untraced round is judged on.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

__all__ = ["MallocReader", "fd_count", "fd_targets", "malloc_reader"]

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
