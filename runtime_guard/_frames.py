"""The one answer to "whose code is this file?", for every report that names a line.

A leak report, an unreleased client's creation site and a failing leak test all name the
line a person should change. That is the first frame in the user's own code: not the
standard library, not an installed package (a web server, a framework, a client library),
and never the guard itself. Each file is classified once and the answer cached, because the
tracking hook asks on every construction of a tracked class.

Kinds, from what a report skips first:

``GUARD``
    runtime_guard itself, tracemalloc and the import machinery: the measuring apparatus,
    never the cause of a leak.
``STDLIB``
    the standard library, and code generated at run time (``<string>``, ``<attrs
    generated init>``), which belongs to whatever generated it.
``LIBRARY``
    installed packages: site-packages, dist-packages, the user site.
``USER``
    everything else: the application, its tests, an interactive session.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import site

__all__ = [
    "GUARD",
    "LIBRARY",
    "STDLIB",
    "USER",
    "FrameKind",
    "is_library",
    "is_stdlib",
    "is_user",
    "kind",
    "library_directories",
]


class FrameKind(enum.IntEnum):
    """Whose code a file is; ordered from the code a report skips first."""

    GUARD = 0
    STDLIB = 1
    LIBRARY = 2
    USER = 3


# The kinds as module constants, for loops over frames that may run while tracemalloc
# traces: on 3.11 reading a member off its enum class makes an object, which tracing
# makes cost microseconds (2 us a read at 16 frames).
GUARD, STDLIB, LIBRARY, USER = FrameKind.GUARD, FrameKind.STDLIB, FrameKind.LIBRARY, FrameKind.USER


def _directories(*keys: str) -> tuple[str, ...]:
    import sysconfig

    paths = sysconfig.get_paths()
    found = {paths.get(key, "") for key in keys}
    found.discard("")
    # Both spellings: a venv's site-packages is often reached through a symbolic link.
    prefixes = {os.path.join(os.path.realpath(p), "") for p in found}
    prefixes |= {os.path.join(os.path.abspath(p), "") for p in found}
    return tuple(sorted(prefixes))


def _library_directories() -> tuple[str, ...]:
    found = set(_directories("purelib", "platlib"))
    with contextlib.suppress(AttributeError):  # some virtualenv builds of ``site`` lack it
        found.update(os.path.join(os.path.realpath(p), "") for p in site.getsitepackages())
    if site.ENABLE_USER_SITE:
        found.add(os.path.join(os.path.realpath(site.getusersitepackages()), ""))
    return tuple(sorted(found))


_GUARD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")
# Beside os.py in the stdlib; found without importing tracemalloc (and pickle) everywhere.
_TRACEMALLOC_FILE = os.path.join(os.path.dirname(os.path.abspath(os.__file__)), "tracemalloc.py")


@functools.cache
def _stdlib_and_library_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Found at the first file classified, not at import: ``sysconfig`` costs a worker's
    start-up about a millisecond, and a worker that tracks nothing never needs it."""
    return _directories("stdlib", "platstdlib"), _library_directories()


_MACHINERY = ("<frozen importlib", "<frozen zipimport")
_INTERACTIVE = ("<stdin>", "<console", "<input>", "<ipython-input")
_SITE_DIR_NAMES = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")

cache: dict[str, FrameKind] = {}
"""File name -> kind, filled on first sight. Hot paths read it directly (``cache.get``)."""


def _classify(filename: str) -> FrameKind:
    if filename.startswith("<"):
        if filename.startswith(_MACHINERY):
            return FrameKind.GUARD
        return FrameKind.USER if filename.startswith(_INTERACTIVE) else FrameKind.STDLIB
    path = os.path.abspath(filename)
    if path.startswith(_GUARD_DIR) or path == _TRACEMALLOC_FILE:
        return FrameKind.GUARD
    stdlib_dirs, library_dirs = _stdlib_and_library_dirs()
    # site-packages may sit under the stdlib directory (lib/python3.11/site-packages), so
    # installed packages are recognised first.
    if path.startswith(library_dirs) or any(part in path for part in _SITE_DIR_NAMES):
        return FrameKind.LIBRARY
    if path.startswith(stdlib_dirs):
        return FrameKind.STDLIB
    return FrameKind.USER


def kind(filename: str) -> FrameKind:
    """The :class:`FrameKind` of code from ``filename`` (cached per file name)."""
    known = cache.get(filename)
    if known is None:
        known = cache[filename] = _classify(filename)
    return known


def is_user(filename: str) -> bool:
    """True for the application's own code: what a report names first."""
    return kind(filename) is USER


def is_library(filename: str) -> bool:
    """True for anything but the user's code: the guard, the stdlib, installed packages."""
    return kind(filename) is not USER


def is_stdlib(filename: str) -> bool:
    """True for the standard library and generated code (not installed packages)."""
    return kind(filename) is STDLIB


def library_directories() -> tuple[str, ...]:
    """The directories whose files are not the user's (the stdlib, installed packages, the
    guard), each ending in a separator, longest first: for showing a library file's path
    from its package down."""
    stdlib_dirs, library_dirs = _stdlib_and_library_dirs()
    found = {*stdlib_dirs, *library_dirs, _GUARD_DIR}
    return tuple(sorted(found, key=len, reverse=True))
