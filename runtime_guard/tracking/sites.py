"""Where an object was created: the first frame outside library code, cheaply.

``traceback.extract_stack()`` walks and formats every frame (tens of microseconds in a
deep web stack); a construction hook runs on hot paths, so this walks ``f_back`` by hand,
keeps code objects and line numbers only, and formats nothing until a report is built.
"""

from __future__ import annotations

import os
import sys
from types import CodeType, FrameType

from runtime_guard import _frames

__all__ = ["STACK_DEPTH", "Site", "capture"]

STACK_DEPTH = 2
"""Frames kept per site: the creating frame and its caller. Each further frame costs about
0.13 us per tracked construction (``f_back`` materialises a frame object)."""

# Distinct sites are interned so that each record holds one shared object; past this many
# a new site is still recorded but no longer interned, bounding the table, not the records.
_MAX_INTERNED = 10_000


# The frame classifier's cache, read directly on the construction hook's path.
_kinds = _frames.cache
_USER = _frames.USER
_LIBRARY = _frames.LIBRARY


class Site:
    """One creation site: a short stack, innermost first, from the first frame outside library
    code. Frames are kept as ``(code, instruction offset)`` and named only when asked for.
    """

    __slots__ = ("_frames",)

    def __init__(self, frames: tuple[tuple[CodeType, int], ...]) -> None:
        self._frames = frames

    @property
    def where(self) -> tuple[str, int, str]:
        """``(file, line, function)`` of the creating frame: the key reports group by."""
        if not self._frames:
            return ("<unknown>", 0, "<unknown>")
        code, lasti = self._frames[0]
        return (code.co_filename, _line(code, lasti), code.co_name)

    @property
    def filename(self) -> str:
        """The file of the creating frame."""
        return self.where[0]

    @property
    def lineno(self) -> int:
        """The line of the creating frame."""
        return self.where[1]

    @property
    def function(self) -> str:
        """The function of the creating frame."""
        return self.where[2]

    @property
    def frames(self) -> list[tuple[str, int, str]]:
        """``(file, line, function)`` from the creating frame outwards."""
        return [
            (code.co_filename, _line(code, lasti), code.co_name) for code, lasti in self._frames
        ]

    def __str__(self) -> str:
        return format_frame(*self.where)

    def __repr__(self) -> str:
        return f"<Site {self}>"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: the creating frame and the short stack."""
        filename, line, function = self.where
        return {
            "site": format_frame(filename, line, function),
            "file": filename,
            "line": line,
            "function": function,
            "stack": [format_frame(*frame) for frame in self.frames],
        }


def format_frame(filename: str, line: int, function: str) -> str:
    """``path:line in function``, the path relative to the working directory when under it."""
    try:
        shown = os.path.relpath(filename)
        if shown.startswith(os.pardir):
            shown = filename
    except ValueError:
        shown = filename
    return f"{shown}:{line} in {function}"


_interned: dict[tuple[int, ...], Site] = {}
_getframe = sys._getframe
_UNKNOWN = Site(())


def capture(skip: int = 1) -> Site:
    """Return the :class:`Site` of the caller ``skip`` frames up (1: the caller's caller).

    The site starts at the first frame outside library code; when the whole stack is
    library code (a thread a library started, say) at the first installed package's frame,
    else at the nearest frame.
    """
    # Hand-unrolled and keyed by ``id(code)`` and ``f_lasti``: hashing a code object and
    # computing ``f_lineno`` each cost more than the rest together (measured: 1.4 us with
    # them, about 0.5 us without); lines are resolved only when a report is built, and the
    # interned Site keeps its code objects alive, so their ids cannot be reused meanwhile.
    try:
        frame = _getframe(skip + 1)
    except ValueError:  # fewer frames than asked for
        return _UNKNOWN
    code = frame.f_code
    if _kinds.get(code.co_filename) is not _USER:
        frame = _first_outside_library(frame)
        code = frame.f_code
    back = frame.f_back
    if back is None:
        key: tuple[int, ...] = (id(code), frame.f_lasti)
    else:
        key = (id(code), frame.f_lasti, id(back.f_code), back.f_lasti)
    found = _interned.get(key)
    if found is None:
        found = _make(key, frame)
    return found


def _first_outside_library(frame: FrameType) -> FrameType:
    # No user frame at all (a web server's own task, a pool's worker thread): the first
    # installed package's frame names more than the standard library's machinery does.
    first: FrameType = frame
    library: FrameType | None = None
    walk: FrameType | None = frame
    kinds = _kinds
    while walk is not None:
        filename = walk.f_code.co_filename
        kind = kinds.get(filename)
        if kind is None:
            kind = _frames.kind(filename)
        if kind is _USER:
            return walk
        if library is None and kind is _LIBRARY:
            library = walk
        walk = walk.f_back
    return first if library is None else library


def _make(key: tuple[int, ...], frame: FrameType | None) -> Site:
    frames: list[tuple[CodeType, int]] = []
    while frame is not None and len(frames) < len(key) // 2:
        frames.append((frame.f_code, frame.f_lasti))
        frame = frame.f_back
    found = Site(tuple(frames))
    if len(_interned) < _MAX_INTERNED:
        _interned[key] = found
    return found


def _line(code: CodeType, lasti: int) -> int:
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line if line is not None else code.co_firstlineno
    return code.co_firstlineno
