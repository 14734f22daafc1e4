"""Where memory grew between two tracemalloc snapshots, named at the user's own line."""

from __future__ import annotations

import linecache
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
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


# Work done between two pauses, when the caller passes a pause.
_SLICE = 0.004

Line = tuple[str, int]
"""A frame as tracemalloc's raw traces hold it: ``(filename, lineno)``."""


def _made_by_machinery(frames: Sequence[Line]) -> bool:
    """True when the first frame outside the stdlib is tracemalloc, importlib or the guard.

    That is the guard's own bookkeeping (its history, its threads, the snapshot itself),
    also when the allocating line is a stdlib function the guard called.
    """
    for filename, _ in frames:
        kind = _frames.kind(filename)
        if kind is _frames.GUARD:
            return True
        if kind is not _frames.STDLIB:
            return False
    return False


def _site_frame(frames: Sequence[Line]) -> Line:
    """Pick the line to report from frames ordered most recent first: the user's own line
    where the traceback reaches it, else the innermost installed package's, else the first.

    A server or framework frame (gunicorn, werkzeug, starlette) is never preferred to the
    application's line that called into it.
    """
    fallback = None
    for frame in frames:
        kind = _frames.kind(frame[0])
        if kind is _frames.USER:
            return frame
        if fallback is None and kind is _frames.LIBRARY:
            fallback = frame
    return fallback or frames[0]


def _raw_traces(snapshot: tracemalloc.Snapshot) -> Iterable[tuple[Any, ...]]:
    """``(domain, size, frames most recent first, ...)`` per trace.

    The snapshot's own list, read directly: grouping it here costs a tenth of
    ``Snapshot.compare_to``, which makes a Trace, a Traceback and a Frame object per trace
    (measured on a window of a busy server: 0.54 s down to a few tens of ms).
    """
    raw = getattr(snapshot.traces, "_traces", None)
    if isinstance(raw, list):
        return raw
    return (
        (t.domain, t.size, tuple((f.filename, f.lineno) for f in reversed(t.traceback)))
        for t in snapshot.traces
    )


def diff_snapshots(
    before: tracemalloc.Snapshot,
    after: tracemalloc.Snapshot,
    limit: int = 10,
    exclude: Sequence[str] = (),
    *,
    pause: Callable[[], None] | None = None,
    stats: dict[str, float] | None = None,
) -> list[AllocationSite]:
    """Return the ``limit`` allocation sites that grew most from ``before`` to ``after``.

    Allocations are grouped by traceback after dropping the frames of tracemalloc, the
    import machinery and runtime_guard itself; ``exclude`` adds ``fnmatch`` patterns of file
    names whose frames are dropped too. An allocation that the machinery made itself (its
    first frame outside the stdlib is one of those) is left out. Each traceback is then
    named by its line: the user's own where the traceback reaches it (never a server's or
    a framework's, nor the ``json`` or ``collections`` internals it called), and the
    tracebacks of one line add up. Lines of the user's code come first, biggest first,
    unless they are under a tenth of the biggest line.

    ``pause`` is called every few milliseconds of work (a running server's guard lets its
    requests take the GIL); a library's function is named only where its loaded code
    objects name it, never by parsing its source on a server's time. ``stats`` receives
    ``longest_slice``, the longest stretch between two pauses.
    """
    longest = 0.0
    slice_start = time.perf_counter()

    def breathe() -> None:
        nonlocal longest, slice_start
        if pause is not None:
            longest = max(longest, time.perf_counter() - slice_start)
            pause()
            slice_start = time.perf_counter()

    patterns = tuple(exclude)

    def keep(filename: str) -> bool:
        if _frames.kind(filename) is _frames.GUARD:
            return False
        return not any(fnmatch(filename, pattern) for pattern in patterns)

    by_traceback: dict[tuple[Line, ...], list[int]] = {}
    for sign, snapshot in ((1, after), (-1, before)):
        for n, trace in enumerate(_raw_traces(snapshot)):
            totals = by_traceback.get(trace[2])
            if totals is None:
                totals = by_traceback[trace[2]] = [0, 0]
            totals[0] += sign * trace[1]
            totals[1] += sign
            if not n % 1024 and time.perf_counter() - slice_start >= _SLICE:
                breathe()
    # One site per line: everything a line allocated, through whichever library calls
    # (a client's constructor makes dozens of objects in its own frames), counts for it.
    by_line: dict[Line, list[Any]] = {}
    for recent_first, (size, count) in by_traceback.items():
        if (size == 0 and count == 0) or _made_by_machinery(recent_first):
            continue
        frames = tuple(f for f in recent_first if keep(f[0]))
        if not frames:
            continue
        line = by_line.setdefault(_site_frame(frames), [0, 0, frames, 0])
        line[0] += size
        line[1] += count
        if size > line[3]:  # the biggest of its tracebacks stands for the line
            line[2], line[3] = frames, size
    # The user's lines lead: a server's or framework's own caches refill all the time (a
    # URL parser's, a router's), and are no leak of the application's; they come first only
    # where the user's biggest line is small beside them (a library leaking on its own).
    biggest = max((line[0] for line in by_line.values()), default=0)

    def rank(item: tuple[int, int, Line, tuple[Line, ...]]) -> tuple[bool, int]:
        size, _, (filename, _lineno), _ = item
        users = _frames.kind(filename) is _frames.USER and size * 10 >= biggest
        return (users, size)

    ranked = sorted(
        ((size, count, where, frames) for where, (size, count, frames, _) in by_line.items()),
        key=rank,
        reverse=True,
    )
    sites: list[AllocationSite] = []
    for size, count, (filename, lineno), frames in ranked:
        if size <= 0 or len(sites) >= max(limit, 0):
            break
        breathe()
        sites.append(
            AllocationSite(
                filename=filename,
                lineno=lineno,
                function=function_at(filename, lineno, parse=_frames.is_user(filename)),
                size_diff=size,
                count_diff=count,
                traceback=[_format_frame(f) for f in frames[:DEFAULT_FRAMES]],
            )
        )
    if stats is not None:
        stats["longest_slice"] = max(longest, time.perf_counter() - slice_start)
    return sites


def _format_frame(frame: Line) -> str:
    line = linecache.getline(frame[0], frame[1]).strip()
    text = f"{frame[0]}:{frame[1]}"
    return f"{text}: {line[:120]}" if line else text
