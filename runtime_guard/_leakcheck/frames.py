"""Whose code a file is: the check's own machinery, a library, or the code under test.

Every decision of the leak check about a frame goes through :func:`kind`: which line an
allocation is reported at, which module's globals may hold a leak, which stack frames'
locals are searched, which threads and tasks are the test's. It is the package's one
classifier (:mod:`runtime_guard._frames`) seen from a test: libraries are the standard
library, installed packages (site-packages) and generated code (``<string>``); the
machinery is the guard, tracemalloc and the import system, and here also pytest's call
machinery. Everything else is the user's.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import re
import sys

from runtime_guard import _frames

__all__ = ["LIBRARY", "MACHINERY", "PYTEST_FILES", "USER", "Kind", "kind", "machinery_module"]

PYTEST_FILES = ("*/_pytest/*", "*/pluggy/*")
"""pytest's own call machinery."""

# One expression compiled at import: fnmatch compiles into a cache that settling empties
# each round, so matching a new file name mid-check would leave fnmatch's strings behind.
_PYTEST = re.compile("|".join(fnmatch.translate(pattern) for pattern in PYTEST_FILES))


class Kind(enum.IntEnum):
    """What a file is to the leak check."""

    USER = 0
    """The code under test: the application and its tests."""
    LIBRARY = 1
    """The standard library, an installed package, or generated code."""
    MACHINERY = 2
    """runtime_guard, tracemalloc, the import system, pytest and pluggy."""


# The kinds as module constants, for the code that runs while tracemalloc traces (the
# survey of what a failing body kept): on 3.11 reading a member off its enum class makes
# an object, and traced 16 frames deep that cost 2 us a read (3.13: 0.05 us). Classifying
# a 16-frame trace took 47 us, 2.6 us with the constants.
USER, LIBRARY, MACHINERY = Kind.USER, Kind.LIBRARY, Kind.MACHINERY


@functools.cache
def kind(filename: str) -> Kind:
    """What ``filename`` is to the leak check (cached per file name)."""
    shared = _frames.kind(filename)
    if shared is _frames.GUARD or _PYTEST.match(filename) is not None:
        return MACHINERY
    return USER if shared is _frames.USER else LIBRARY


@functools.cache
def machinery_module(name: str) -> bool:
    """Whether the loaded module ``name`` is the machinery's (pytest's, pluggy's, this
    package's): its globals and its classes' instances never hold the code under test's
    leaks (cached per module name)."""
    filename = getattr(sys.modules.get(name), "__file__", None)
    return isinstance(filename, str) and kind(filename) is MACHINERY
