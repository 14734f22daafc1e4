"""Where memory grew between two tracemalloc snapshots, named at the user's own line."""

from __future__ import annotations

import linecache
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

from runtime_guard import _frames
from runtime_guard._units import format_size
from runtime_guard.diagnosis.functions import function_at
from runtime_guard.diagnosis.tracing import DEFAULT_FRAMES

__all__ = ["AllocationSite", "diff_snapshots"]


@dataclass
class AllocationSite:
    """Where memory grew between two tracemalloc snapshots."""

    filename: str
    """File of the line that allocated: the first frame outside the stdlib and the guard."""
    lineno: int
    """Line number in :attr:`filename`."""
    function: str
    """Qualified name of the function holding that line (``"<module>"`` at top level)."""
    size_diff: int
    """Bytes more held by allocations from this traceback than at the first snapshot."""
    count_diff: int
    """Memory blocks more held than at the first snapshot."""
    traceback: list[str] = field(default_factory=list)
    """Short traceback, most recent frame first: ``"file:line: source"``."""

    @property
    def location(self) -> str:
        """``file:line``."""
        return f"{self.filename}:{self.lineno}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "filename": self.filename,
            "lineno": self.lineno,
            "function": self.function,
            "size_diff": self.size_diff,
            "count_diff": self.count_diff,
            "traceback": list(self.traceback),
        }

    def __str__(self) -> str:
        sign = "+" if self.size_diff >= 0 else "-"
        return (
            f"{self.location} in {self.function}: {sign}{format_size(abs(self.size_diff))} "
            f"in {self.count_diff:+,} blocks"
        )


def _made_by_machinery(frames: Sequence[tracemalloc.Frame]) -> bool:
    """True when the first frame outside the stdlib is tracemalloc, importlib or the guard.

    That is the guard's own bookkeeping (its history, its threads, the snapshot itself),
    also when the allocating line is a stdlib function the guard called.
    """
    for frame in frames:
        kind = _frames.kind(frame.filename)
        if kind is _frames.FrameKind.GUARD:
            return True
        if kind is not _frames.FrameKind.STDLIB:
            return False
    return False


def _site_frame(frames: Sequence[tracemalloc.Frame]) -> tracemalloc.Frame:
    """Pick the line to report from frames ordered most recent first: the user's own line
    where the traceback reaches it, else the innermost installed package's, else the first.

    A server or framework frame (gunicorn, werkzeug, starlette) is never preferred to the
    application's line that called into it.
    """
    fallback = None
    for frame in frames:
        kind = _frames.kind(frame.filename)
        if kind is _frames.FrameKind.USER:
            return frame
        if fallback is None and kind is _frames.FrameKind.LIBRARY:
            fallback = frame
    return fallback or frames[0]


def diff_snapshots(
    before: tracemalloc.Snapshot,
    after: tracemalloc.Snapshot,
    limit: int = 10,
    exclude: Sequence[str] = (),
) -> list[AllocationSite]:
    """Return the ``limit`` allocation sites that grew most from ``before`` to ``after``.

    Allocations are grouped by traceback after dropping the frames of tracemalloc, the
    import machinery and runtime_guard itself; ``exclude`` adds ``fnmatch`` patterns of file
    names whose frames are dropped too. An allocation that the machinery made itself (its
    first frame outside the stdlib is one of those) is left out. The reported line is
    the most recent frame outside the standard library where there is one: the user's
    leaking line rather than the ``json`` or ``collections`` internals it called.
    """
    patterns = tuple(exclude)

    def keep(filename: str) -> bool:
        if _frames.kind(filename) is _frames.FrameKind.GUARD:
            return False
        return not any(fnmatch(filename, pattern) for pattern in patterns)

    grouped: dict[tuple[tracemalloc.Frame, ...], list[int]] = {}
    for stat in after.compare_to(before, "traceback"):
        if stat.size_diff == 0 and stat.count_diff == 0:
            continue
        # tracemalloc's Traceback runs oldest to most recent; reports read most recent first.
        recent_first = tuple(reversed(stat.traceback))
        if _made_by_machinery(recent_first):
            continue
        frames = tuple(f for f in recent_first if keep(f.filename))
        if not frames:
            continue
        totals = grouped.setdefault(frames, [0, 0])
        totals[0] += stat.size_diff
        totals[1] += stat.count_diff
    ranked = sorted(
        ((size, count, frames) for frames, (size, count) in grouped.items() if size > 0),
        key=lambda item: item[0],
        reverse=True,
    )[: max(limit, 0)]
    sites = []
    for size, count, frames in ranked:
        frame = _site_frame(frames)
        sites.append(
            AllocationSite(
                filename=frame.filename,
                lineno=frame.lineno,
                function=function_at(frame.filename, frame.lineno),
                size_diff=size,
                count_diff=count,
                traceback=[_format_frame(f) for f in frames[:DEFAULT_FRAMES]],
            )
        )
    return sites


def _format_frame(frame: tracemalloc.Frame) -> str:
    line = linecache.getline(frame.filename, frame.lineno).strip()
    text = f"{frame.filename}:{frame.lineno}"
    return f"{text}: {line[:120]}" if line else text
