"""What this interpreter lets the guard measure, where Pythons and builds differ.

The cheap figures assume CPython's default build: pymalloc serves every object of up to
512 bytes, so ``sys.getallocatedblocks()`` counts the live small objects of the whole
process in one call. Without pymalloc that count reads 0 (``PYTHONMALLOC=malloc``, a
build without it); with mimalloc it counts something else (a free-threaded build walks
every thread's heaps and counts allocations of every size; ``PYTHONMALLOC=mimalloc`` on a
default build counts the calling thread's heap only). Python 3.12 made every interned
string immortal: a string interned per call is never freed there. Python 3.12 also starts
with objects of its own in the collector's permanent generation (the tuples of its static
types), where other versions start with none: a count of frozen objects there is not
proof that the host froze any.

Each difference is detected once, at import, and stated in words, so that whatever relies
on the figure can judge by another one or say why it cannot, never read a wrong figure as
a verdict.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable

__all__ = ["FROZEN_AT_START", "HEAP_BLOCKS_UNREAD", "INTERNED_IMMORTAL", "immortal_strings"]


def _heap_blocks_unread() -> str | None:
    # A free-threaded build's ABI flags carry a "t" (sysconfig says so too, at an import's
    # cost in every pytest session).
    if "t" in getattr(sys, "abiflags", ""):
        return (
            "on a free-threaded build sys.getallocatedblocks() walks every thread's mimalloc "
            "heaps and counts allocations of every size, not pymalloc's small objects"
        )
    allocator = "" if sys.flags.ignore_environment else os.environ.get("PYTHONMALLOC", "")
    if allocator.startswith("mimalloc"):
        return (
            f"with PYTHONMALLOC={allocator} sys.getallocatedblocks() counts the calling "
            "thread's mimalloc heap only, not the small objects of the whole process"
        )
    if sys.getallocatedblocks() == 0:
        # Importing this package alone allocates thousands of blocks: 0 means none are
        # counted, not none made.
        return "sys.getallocatedblocks() reads 0: pymalloc is not in use" + (
            f" (PYTHONMALLOC={allocator})" if allocator else " (a build without it)"
        )
    return None


HEAP_BLOCKS_UNREAD: str | None = _heap_blocks_unread()
"""Why ``sys.getallocatedblocks()`` does not count the process's small objects on this
interpreter, in words; None where it does (CPython's default build with pymalloc)."""

FROZEN_AT_START: int = gc.get_freeze_count()
"""Objects in the permanent generation when this module was first imported: the
interpreter's own (375 in a bare 3.12.1, 0 in 3.11 and 3.13), and any a start-up hook froze.
Imported with the pytest plugin, before any test module or conftest runs."""

INTERNED_IMMORTAL: bool = sys.version_info[:2] == (3, 12)
"""True where ``sys.intern()`` makes a string immortal: never freed, whoever drops it."""


def _immortal_strings() -> Callable[[], int] | None:
    size: Callable[..., int] | None = getattr(sys, "getunicodeinternedsize", None)
    if size is None:  # before 3.12: interned strings are freed with their last reference
        return None
    if INTERNED_IMMORTAL:
        return size
    try:
        size(_only_immortal=True)
    except TypeError:  # an interpreter without the keyword: no count of its own to read
        return None

    def immortal() -> int:
        return size(_only_immortal=True)

    return immortal


immortal_strings: Callable[[], int] | None = _immortal_strings()
"""Interned strings that will never be freed, counted by the interpreter; None where it
keeps no such count (3.11)."""
