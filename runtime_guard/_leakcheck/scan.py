"""What a leaky call left behind: the objects it kept, the user's line that made them, and
what holds them.

Everything that needs an object's allocation traceback runs while tracemalloc still traces,
inside :func:`survey`, and reads the tracebacks in bulk (``map`` over C calls): while
tracing, every object Python code makes is itself a traced allocation. Only objects allocated
since tracing began are looked at: the heap before it is frozen (``gc.freeze()``), so
``gc.get_objects()`` lists the young objects alone. :meth:`Findings.finish` then works out,
with tracing stopped, which of them are kept by something older (the roots of the growth)
and names each root by the user's line that made it.
"""

from __future__ import annotations

import _tracemalloc
import functools
import gc
import io
import itertools
import linecache
import operator
import os
import socket
import struct
import sys
import threading
import time
import tracemalloc
import types
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime_guard import _frames, diagnosis
from runtime_guard._leakcheck.frames import (
    LIBRARY,
    MACHINERY,
    PYTEST_FILES,
    USER,
    kind,
    machinery_module,
)
from runtime_guard._units import format_size
from runtime_guard.diagnosis import functions, referrers

__all__ = [
    "PYTEST_FILES",
    "Findings",
    "backward_chain",
    "excluded",
    "frame_text",
    "in_flight_calls",
    "kept_apart_from",
    "machinery",
    "new_tasks",
    "new_threads",
    "shown",
    "stack_roots",
    "survey",
    "user_frame",
    "user_modules",
]

_ATOMIC = (str, bytes, int, float, complex, bytearray)

_THREADING = threading.__file__

# pymalloc serves requests up to this size; larger ones go to malloc.
_SMALL_BLOCK = 512

# Young objects a holder may be found holding, at most, and the objects the forward search
# visits and the time it takes, at most.
_HITS = 64
_SEARCH_OBJECTS = 5_000
_SEARCH_SECONDS = 0.1
_SEARCH_DEPTH = 6
_WIDE = 128

# Allocation sites kept from the traced call.
_SITES = 5

# Candidates for the backward referrer chain, when the forward search found no holder,
# and the time it may take: each level of it scans the whole heap (gc.get_referrers).
_CANDIDATES = 5
_BACKWARD_SECONDS = 0.04

# Library modules a forward search starts from when the user's hold nothing of the growth.
_LIBRARY_STARTS = 3

Line = tuple[str, int]

# Calls other threads are in the middle of (:func:`in_flight_calls`).
InFlight = frozenset[tuple[str, tuple[Line, ...]]]

# Never followed by the forward search: leaves, or paths into everything.
_LEAVES = (*_ATOMIC, types.ModuleType, type(None), bool)

_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python

_LIBRARY_DIRS = tuple(sorted(_frames.library_directories(), key=len, reverse=True))


def excluded(filename: str) -> bool:
    """True for files whose allocations are the check's own or pytest's, not the body's."""
    return kind(filename) is MACHINERY


def machinery(frames: Sequence[Line]) -> bool:
    """True when an allocation is the check's own, or pytest's: its first frame outside the
    standard library and installed packages is one of theirs (a ``posixpath`` call of ours
    is ours)."""
    for filename, _ in frames:
        found = kind(filename)
        if found is MACHINERY:
            return True
        if found is USER:
            return False
    return False


def user_frame(frames: Sequence[Line]) -> Line | None:
    """The most recent frame in the user's code, or None when every frame is a library's."""
    for frame in frames:
        if kind(frame[0]) is USER:
            return frame
    return None


def shown(filename: str) -> str:
    """A path relative to the working directory when under it, as pytest shows paths; a
    library's relative to the directory it is installed in (``urllib3/connection.py``)."""
    for prefix in _LIBRARY_DIRS:
        if filename.startswith(prefix):
            return filename[len(prefix) :]
    try:
        relative = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if relative.startswith(os.pardir) else relative


def _frames_of(obj: object) -> tuple[Line, ...] | None:
    """Raw frames, most recent first, where ``_tracemalloc`` lacks the private call."""
    traceback = tracemalloc.get_object_traceback(obj)
    if traceback is None:
        return None
    return tuple((frame.filename, frame.lineno) for frame in reversed(traceback))


# The private call returns the raw frames, most recent first, without a Traceback and a
# Frame object per survivor (measured on a leaky body: 0.45 s with the public call).
_raw_traceback: Callable[[object], Any] = getattr(_tracemalloc, "_get_object_traceback", _frames_of)

# On 3.11 that call looks an object up at its address less the GC header alone, while an
# instance of a class with a managed __dict__ (any class defined in Python without
# __slots__) starts two pointers earlier: such instances never have a traceback there
# (fixed in 3.12). tracemalloc's C API looks a block up by its address, which is known.
_MANAGED_DICT = 1 << 4  # Py_TPFLAGS_MANAGED_DICT
_PRE_HEADER = 4 * struct.calcsize("P")  # PyGC_Head, then the dict and values pointers


def _block_traceback() -> Callable[[int, int], Any] | None:
    if sys.version_info >= (3, 12):
        return None
    try:
        import ctypes

        function = ctypes.pythonapi._PyTraceMalloc_GetTraceback
    except (ImportError, AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_uint, ctypes.c_size_t]
    function.restype = ctypes.py_object
    return function


_by_address = _block_traceback()
_NONES = itertools.repeat(None)


def _tracebacks(
    objects: list[object], young: set[int] | None = None
) -> list[tuple[Line, ...] | None]:
    """Each object's allocation frames (most recent first), None for one made untraced.

    ``young``: ids of the objects known to be young (the collector's young objects); only
    those are looked up again by address on 3.11, as old ones have no traceback anyway.
    """
    found: list[tuple[Line, ...] | None] = list(map(_raw_traceback, objects))
    if _by_address is None or not young:
        return found
    missing = itertools.compress(range(len(found)), map(operator.is_, found, _NONES))
    for at in missing:
        obj = objects[at]
        cls: Any = type(obj)
        if _managed(cls) and id(obj) in young:
            found[at] = _by_address(0, id(obj) - _PRE_HEADER)
    return found


@functools.lru_cache(maxsize=256)
def _managed(cls: Any) -> bool:
    # Cached: while tracing, reading __flags__ makes an int, traced, per object.
    return bool(cls.__flags__ & _MANAGED_DICT)


Traced = tuple[object, tuple[Line, ...]]
"""An object allocated while tracing, with its raw frames (most recent first)."""


@dataclass
class _Root:
    """A kept object that something older holds, and what it holds of the other kept
    objects."""

    obj: object
    frames: tuple[Line, ...]
    size: int = 0
    count: int = 0
    stands_for: object = None
    """The object named for the root: the first instance of a Python class in it."""
    line: Line | None = None


@dataclass
class Findings:
    """What :func:`survey` gathered while the traces were there; :meth:`finish` reads it.

    Gathering is C iterators only: while tracing, every object Python code makes (an int
    from ``id()``, a dict entry) is itself a traced allocation, each costing a stack walk.
    Counting and naming happen in :meth:`finish`, once tracing has stopped.
    """

    snapshot: tracemalloc.Snapshot
    """tracemalloc's traces at the end of the traced call."""
    survivors: list[list[Traced]] = field(default_factory=list)
    """Objects allocated while tracing and alive at the end, in batches."""
    paths: list[tuple[str, list[object]]] = field(default_factory=list)
    """From a root namespace down to a young object, for each the forward search found."""
    files: list[Traced] = field(default_factory=list)
    """Young file and socket objects, candidates for the owners of new descriptors."""
    types: Counter[str] = field(default_factory=Counter)
    """Survivors by type name (after :meth:`finish`)."""
    line: Line | None = None
    """The leaking line: the user's line whose kept objects weigh most (after finish)."""
    lines: dict[Line, tuple[int, int, str]] = field(default_factory=dict)
    """Bytes and objects kept per user's line, and the type that stands for them."""
    fd_line: Line | None = None
    """The user's line that opened the first owner of a new descriptor (after finish)."""
    shallow: bool = False
    """True when the biggest kept object was made deeper in a library than the frames
    traced reach: its user's line is unknown (after finish)."""
    sites: list[diagnosis.AllocationSite] = field(default_factory=list)
    """The traced growth by the user's line, biggest first (after :meth:`finish`)."""
    held: list[object] = field(default_factory=list)
    """A few roots: where a backward referrer chain may start when the forward search found
    no holder (after :meth:`finish`)."""
    library_paths: list[tuple[str, list[object]]] = field(default_factory=list)
    """Paths the forward search found from library modules, when none from the user's."""
    chain: list[str] | None = None
    """Links from a root namespace down to the leaking line's objects (after finish)."""
    exceptions: list[str] = field(default_factory=list)
    """Kept exceptions, described (after :meth:`finish`)."""
    fd_owners: list[str] = field(default_factory=list)
    """File and socket objects holding the new descriptors (after :meth:`finish`)."""
    created: dict[int, tuple[Line, ...]] = field(default_factory=dict)
    """Allocation frames of young threads and tasks by ``id()`` (after :meth:`finish`)."""
    in_flight: InFlight = frozenset()
    """Calls other threads are in the middle of: what they made is not the body's."""

    def finish(self, new_fds: set[int]) -> None:
        """Find the roots, name the leaking line; call once tracing has stopped."""
        young: dict[int, Traced] = {}
        for batch in self.survivors:
            for obj, frames in batch:
                if (
                    id(obj) not in young
                    and not machinery(frames)
                    and not _made_in_flight(frames, self.in_flight)
                ):
                    young[id(obj)] = (obj, frames)
        paths, self.paths = self.paths, []
        library, self.library_paths = self.library_paths, []
        self.survivors.clear()
        by_type: Counter[type] = Counter()
        started = (threading.Thread, *_task_types())
        for obj, frames in young.values():
            if frames:  # an object without one may be the check's or pytest's own
                by_type[type(obj)] += 1
            if isinstance(obj, started):
                self.created[id(obj)] = frames
        for cls, count in by_type.items():
            self.types[diagnosis.type_name(cls)] += count
        roots = _roots(young, [path[-1] for _, path in paths + library])
        self.sites = _growth_sites(self.snapshot)
        kept = _kept_by_the_user(roots, paths)
        self.lines = _by_line(kept)
        biggest = max(kept, key=lambda root: root.size, default=None)
        limit = self.snapshot.traceback_limit
        self.shallow = biggest is not None and biggest.line is None and len(biggest.frames) >= limit
        self.line = _leaking_line(self.lines, self.sites)
        self.exceptions = _exceptions(roots)
        self.chain = _chain(paths, roots, self.line) or _chain(library, roots, self.line)
        if self.chain is None:
            self.held = [root.obj for root in roots if root.line == self.line][:_CANDIDATES]
        self.fd_owners, self.fd_line = _fd_owners(new_fds, self.files)
        self.files.clear()


def _task_types() -> tuple[type, ...]:
    asyncio = sys.modules.get("asyncio")
    return (asyncio.Task,) if asyncio is not None else ()


def _roots(young: dict[int, Traced], held_by_old: list[object]) -> list[_Root]:
    """The kept objects that older objects hold, each with what it holds of the others.

    Roots are the young objects the forward search found held by an older one
    (``held_by_old``), then those no other young object holds, then, for young cycles
    that neither reaches (a class and its ``__mro__``), one object of each. Each root is
    named by the first instance of a Python class in what it holds (the client in a bound
    method, the service object in a cache key), else by itself, and reported at the user's
    line that allocated the object it is named by.
    """
    held: set[int] = set()
    for obj, _ in young.values():
        if gc.is_tracked(obj):
            for child in gc.get_referents(obj):
                if id(child) in young and child is not obj:
                    held.add(id(child))
    order = [obj for obj in held_by_old if id(obj) in young]
    order += [obj for key, (obj, _) in young.items() if key not in held]
    order += [obj for obj, _ in young.values()]
    roots: list[_Root] = []
    claimed: set[int] = set()
    for start in order:
        if id(start) in claimed:
            continue
        root = _Root(start, young[id(start)][1])
        roots.append(root)
        claimed.add(id(start))
        level = [start]
        while level:
            following: list[object] = []
            for obj in level:
                root.size += sys.getsizeof(obj, 0)
                root.count += 1
                if root.stands_for is None and type(obj).__flags__ & _HEAPTYPE:
                    root.stands_for = obj
                if not gc.is_tracked(obj):
                    continue
                for child in gc.get_referents(obj):
                    if id(child) in young and id(child) not in claimed:
                        claimed.add(id(child))
                        following.append(child)
            level = following
        named = root.stands_for if root.stands_for is not None else root.obj
        root.line = user_frame(young[id(named)][1]) or user_frame(root.frames)
    return roots


def _kept_by_the_user(roots: list[_Root], paths: list[tuple[str, list[object]]]) -> list[_Root]:
    """The roots the forward search found held by the user's code, when it found any.

    A young object that replaced an older one in state the test does not hold (the
    current context's variables, a library's most recent entry) is a root too, but not
    growth; what the user's modules and fixtures hold is.
    """
    found = {id(path[-1]) for _, path in paths}
    kept = [root for root in roots if id(root.obj) in found]
    return kept or roots


def _growth_sites(snapshot: tracemalloc.Snapshot) -> list[diagnosis.AllocationSite]:
    """The traced growth grouped by its first user frame (by its first frame when none)."""
    grouped: dict[Line, list[Any]] = {}
    for trace in _raw_traces(snapshot):
        frames = trace[2]
        if not frames or machinery(frames):
            continue
        line = user_frame(frames) or frames[0]
        entry = grouped.get(line)
        if entry is None:
            grouped[line] = [trace[1], 1, frames]
        else:
            entry[0] += trace[1]
            entry[1] += 1
            if len(frames) > len(entry[2]):
                entry[2] = frames
    ranked = sorted(grouped.items(), key=lambda item: -item[1][0])[:_SITES]
    sites = []
    for (filename, lineno), (size, count, frames) in ranked:
        # A library's function is named, and a frame's source read, only when shown (-v):
        # reading them from a large library module cost milliseconds a site.
        user = kind(filename) is USER
        sites.append(
            diagnosis.AllocationSite(
                filename=filename,
                lineno=lineno,
                function=functions.function_at(filename, lineno) if user else "",
                size_diff=size,
                count_diff=count,
                traceback=[
                    f"{path}:{number}" for path, number in frames if kind(path) is not MACHINERY
                ],
            )
        )
    return sites


def frame_text(frame: str) -> str:
    """``file:line: source`` as a traceback shows it, from a site's ``path:line``."""
    filename, _, number = frame.rpartition(":")
    if not number.isdecimal():
        return frame
    source = linecache.getline(filename, int(number)).strip()
    return f"{shown(filename)}:{number}: {source}" if source else f"{shown(filename)}:{number}"


def _by_line(roots: list[_Root]) -> dict[Line, tuple[int, int, str]]:
    """Bytes and objects kept per user's line, with the type that stands for them."""
    by_line: dict[Line, list[Any]] = {}
    for root in roots:
        if root.line is None:
            continue
        entry = by_line.setdefault(root.line, [0, 0, root])
        entry[0] += root.size
        entry[1] += root.count
        if root.size > entry[2].size:
            entry[2] = root
    named = {}
    for line, (size, count, root) in by_line.items():
        obj = root.stands_for if root.stands_for is not None else root.obj
        named[line] = (size, count, diagnosis.type_name(type(obj)))
    return named


def _leaking_line(
    lines: dict[Line, tuple[int, int, str]], sites: list[diagnosis.AllocationSite]
) -> Line | None:
    """The user's line whose kept objects weigh most; the biggest traced site without any."""
    if lines:
        return max(lines, key=lambda line: lines[line][0])
    for site in sites:
        if kind(site.filename) is USER:
            return (site.filename, site.lineno)
    return None


def _exceptions(roots: list[_Root]) -> list[str]:
    """Kept exceptions by type: where raised, and the frames their tracebacks keep alive."""
    found: dict[str, list[Any]] = {}
    for root in roots:
        exc = root.obj
        if not isinstance(exc, BaseException) or exc.__traceback__ is None:
            continue
        name = diagnosis.type_name(type(exc))
        entry = found.setdefault(name, [0, exc, root])
        entry[0] += 1
    lines = []
    for name, (count, exc, root) in found.items():
        frames = []
        traceback = exc.__traceback__
        while traceback is not None:
            frame = traceback.tb_frame
            code = frame.f_code
            if kind(code.co_filename) is USER:
                kept = _big_locals(frame)
                frames.append(
                    f"{code.co_qualname}() at {shown(code.co_filename)}:{traceback.tb_lineno}"
                    + (f" (locals {kept})" if kept else "")
                )
            traceback = traceback.tb_next
        raised = f" raised at {shown(root.line[0])}:{root.line[1]}" if root.line else ""
        times = f" (x{count})" if count > 1 else ""
        keeps = "; its traceback keeps alive the frames of " + ", ".join(frames) if frames else ""
        lines.append(f"{name}{times}{raised}, {format_size(root.size)} with its traceback{keeps}")
    return lines


def _big_locals(frame: types.FrameType) -> str:
    """The biggest locals of a frame, named with their type and size."""
    sizes = []
    for name, value in frame.f_locals.items():
        if isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        sizes.append((sys.getsizeof(value, 0), name, value))
    sizes.sort(key=lambda item: -item[0])
    return ", ".join(
        f"{name}: {diagnosis.type_name(type(value))} {format_size(size)}"
        for size, name, value in sizes[:3]
    )


def _chain(
    paths: list[tuple[str, list[object]]], roots: list[_Root], target: Line | None
) -> list[str] | None:
    """The holder chain to the leaking line's objects, from the forward search's paths."""
    if not paths:
        return None
    by_id = {id(root.obj): root for root in roots}
    best: tuple[str, list[object]] | None = None
    for name, path in paths:
        root = by_id.get(id(path[-1]))
        if root is not None and root.line == target:
            best = (name, path)
            break
    if best is None:
        best = max(paths, key=lambda item: getattr(by_id.get(id(item[1][-1])), "size", 0))
    name, path = best
    path[-1] = _held_value(path[-2], path[-1]) if len(path) > 1 else path[-1]
    return diagnosis.chain_from_path(name, path)


def _traced(objects: Iterable[object]) -> list[Traced]:
    """The objects that have a traceback, each with it: one C pass, no Python per object."""
    objects = list(objects)
    frames = _tracebacks(objects)
    return [(obj, found) for obj, found in zip(objects, frames, strict=True) if found]


def _with_held(objects: list[object]) -> list[Traced]:
    """``objects`` (young, tracked) with their frames (``()`` where unknown), and the
    untracked objects they hold two levels down that have tracebacks.

    CPython stops tracking dicts and tuples of atomic values (a record such as
    ``{"id": 1, "path": "..."}``, a cache dict of strings), so ``gc.get_objects()`` lists
    their holders only. A young object without a traceback reused memory freed before
    tracing began (a free list's tuple): young all the same.
    """
    untracked = list(itertools.filterfalse(gc.is_tracked, gc.get_referents(*objects)))
    # Atomic objects have no referents: asking about all of them costs less than sorting
    # out the dicts and tuples in a Python loop.
    deeper = itertools.filterfalse(gc.is_tracked, gc.get_referents(*untracked))
    frames = _tracebacks(objects, set(map(id, objects)))
    young: list[Traced] = [(obj, found or ()) for obj, found in zip(objects, frames, strict=True)]
    return [*young, *_traced(itertools.chain(untracked, deeper))]


def _raw_traces(snapshot: tracemalloc.Snapshot) -> Iterable[tuple[Any, ...]]:
    raw = getattr(snapshot.traces, "_traces", None)
    if isinstance(raw, list):
        return raw
    # Where the private list is gone, the public traces give the same figures.
    return (
        (trace.domain, trace.size, tuple((f.filename, f.lineno) for f in reversed(trace.traceback)))
        for trace in snapshot.traces
    )


def _top_files(snapshot: tracemalloc.Snapshot) -> list[str]:
    """The user's files whose lines allocated most of the traced growth, most first."""
    sizes: dict[str, int] = {}
    for trace in _raw_traces(snapshot):
        frame = user_frame(trace[2]) if trace[2] and not machinery(trace[2]) else None
        if frame is not None:
            sizes[frame[0]] = sizes.get(frame[0], 0) + trace[1]
    return sorted(sizes, key=lambda name: -sizes[name])


def _library_modules(snapshot: tracemalloc.Snapshot) -> list[tuple[str, dict[str, Any]]]:
    """``(name, globals)`` of the library modules whose code allocated the most traced
    growth (the frames above the user's line), most first."""
    sizes: dict[str, int] = {}
    for trace in _raw_traces(snapshot):
        frames = trace[2]
        if not frames or machinery(frames):
            continue
        for filename, _ in frames:
            if kind(filename) is not LIBRARY:
                break
            sizes[filename] = sizes.get(filename, 0) + trace[1]
    files = sorted(sizes, key=lambda name: -sizes[name])[:_LIBRARY_STARTS]
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, module in list(sys.modules.items()):
        namespace = functions.namespace_of(module)
        filename = namespace.get("__file__") if namespace is not None else None
        if filename in files:
            found[filename] = (name, namespace)  # type: ignore[assignment]
    return [found[filename] for filename in files if filename in found]


def in_flight_calls(depth: int) -> InFlight:
    """The calls the other threads are in the middle of, as an allocation made in one of
    them would be traced (``depth`` frames at most): the called function's file, then the
    frames from its caller outwards.

    A thread that waits in a loop (a watcher's ``queue.get(timeout=...)``, a poller) holds
    objects its waiting call made (the condition's waiter lock, a bound method): alive at
    any reading, freed when the call returns, and made again by the next. They are the
    thread's work in flight, never something a call of the body kept. Matched by line, a
    caller's frame only ever matches the very call it is still in. Only a library's
    function still running counts (a wait, a read, a select): code of the user's may run
    for the thread's whole life, and what it makes (a consumer appending what it takes
    off a queue) may well be a leak. Nor does the thread's own function count (a
    server's ``serve_forever``): it runs from the thread's start.

    The frame objects of the threads' running functions are theirs too: made when an
    exception first passed through the function (a watcher's ``queue.Empty``), they live
    as long as the call, and a thread started shortly before makes its own in any round.
    Each is listed with an empty file name and the whole traceback it was traced with, so
    that it matches that allocation exactly (and only with a caller: one frame deep, a
    line is anybody's).
    """
    me = threading.get_ident()
    calls: set[tuple[str, tuple[Line, ...]]] = set()
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        stack: list[Line] = []
        at: types.FrameType | None = frame
        while at is not None:
            stack.append((at.f_code.co_filename, at.f_lineno))
            made = _raw_traceback(at) if depth > 1 else None
            if made is not None and len(made) > 1:
                calls.add(("", tuple(made)))
            at = at.f_back
        # The thread's own function: the outermost frame outside threading's bootstrap.
        own = len(stack) - 1
        while own > 0 and stack[own][0] == _THREADING:
            own -= 1
        for inner in range(own):
            if kind(stack[inner][0]) is USER:
                continue
            for length in range(1, depth):
                callers = tuple(stack[inner + 1 : inner + 1 + length])
                calls.add((stack[inner][0], callers))
                if inner + 1 + length >= len(stack):
                    break
    return frozenset(calls)


def _made_in_flight(frames: Sequence[Line], calls: InFlight) -> bool:
    return len(frames) > 1 and (
        (frames[0][0], tuple(frames[1:])) in calls or ("", tuple(frames)) in calls
    )


def kept_apart_from(calls: InFlight) -> tuple[int, int]:
    """Small blocks (up to 512 B, pymalloc's) and bytes of the live traces made neither by
    a call in ``calls`` (:func:`in_flight_calls`) nor by the check or pytest."""
    blocks = size = 0
    for trace in _tracemalloc._get_traces():
        frames = trace[2]
        if not _made_in_flight(frames, calls) and not machinery(frames):
            size += trace[1]
            blocks += trace[1] <= _SMALL_BLOCK
    return blocks, size


def stack_roots() -> list[tuple[str, object]]:
    """Locals of the calling frames that run the user's code (not pytest's, not ours)."""
    roots: list[tuple[str, object]] = []
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if kind(code.co_filename) is USER:
            names = frame.f_locals
            # From 3.13 a function's f_locals is a proxy onto the frame, not a dict: the
            # search follows dicts, so it is given a copy of the names.
            roots.append(
                (f"{code.co_qualname}.<locals>", names if type(names) is dict else dict(names))
            )
        frame = frame.f_back  # type: ignore[assignment]
    return roots


def user_modules() -> list[tuple[str, dict[str, Any]]]:
    """``(name, globals)`` of every loaded module of the user's code.

    Kept from one check to the next while ``sys.modules`` keeps its size and its last
    module: walking 1,500 modules took 4 ms a failing check.
    """
    modules = sys.modules
    key = (len(modules), next(reversed(modules), None))
    if _user_modules[0] == key:
        return list(_user_modules[1])
    found: list[tuple[str, dict[str, Any]]] = []
    for key_name, module in list(modules.items()):
        namespace = functions.namespace_of(module)
        filename = namespace.get("__file__") if namespace is not None else None
        if isinstance(filename, str) and kind(filename) is USER:
            name = namespace.get("__name__")  # type: ignore[union-attr]
            found.append((name if isinstance(name, str) else key_name, namespace))  # type: ignore[arg-type]
    _user_modules[:] = [key, found]
    return list(found)


# The user's modules as last found, and the state of sys.modules then (see user_modules).
_user_modules: list[Any] = [None, []]


def _children(holder: object, modules: frozenset[str]) -> Iterable[object]:
    """What the forward search follows from ``holder``: data, not code or other modules.

    Its kind is read from ``type()``, never ``isinstance()``: that asks a proxy for its
    ``__class__``, which sets up a lazy object (Django's settings) or raises.
    """
    cls = type(holder)
    if issubclass(cls, dict):
        # Values first: a cache's values are what it holds; its keys lead to the same chain.
        return itertools.chain(dict.values(holder), dict.keys(holder))  # type: ignore[arg-type]
    if issubclass(cls, type):
        # A class of the user's code holds class-level registries and method caches;
        # other classes lead to the whole type hierarchy.
        klass: type = holder  # type: ignore[assignment]
        return klass.__dict__.values() if klass.__module__ in modules else ()
    if cls is types.FunctionType:
        function: types.FunctionType = holder  # type: ignore[assignment]
        if function.__module__ not in modules:
            return ()
        cells = [cell.cell_contents for cell in function.__closure__ or () if _filled(cell)]
        return itertools.chain(
            function.__defaults__ or (), (function.__kwdefaults__ or {}).values(), cells
        )
    if issubclass(
        cls, (types.ModuleType, types.CodeType, types.FrameType, types.BuiltinFunctionType)
    ) or machinery_module(cls.__module__):
        return ()
    referents = gc.get_referents(holder)
    for at, referent in enumerate(referents):
        # An instance's attributes are one step from it, not two: its __dict__ is followed
        # through, as it is shown (``.sessions``).
        if type(referent) is dict and referrers.is_instance_dict(holder, referent):
            return itertools.chain(referent.values(), referents[:at], referents[at + 1 :])
    return referents


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018  (an empty cell raises)
    except ValueError:
        return False
    return True


def _search(
    findings: Findings, starts: Sequence[tuple[str, object]], budget: int, young: set[int]
) -> list[Traced]:
    """Breadth-first from ``starts`` to the young objects that older objects hold.

    Leaked objects usually sit in a global of the user's module (a list, a cache dict, a
    class-level registry) or in something the test holds (a fixture's app, a local), and
    are often untracked records that ``gc.get_objects()`` never lists. Each level's
    children are asked for their tracebacks at once: a child that has one was made while
    tracing and is not followed further; the path to it is kept. Older children are
    followed unless they are atomic (a string holds nothing), or held by a holder found
    holding young ones (the older ones are the same growth from earlier calls), or by
    one with more children than a registry has (data, such as a catalog of 2,000
    products). The search goes one level past the first in which it found something (what
    a module holds at its top level is often state each call replaces, the last order id,
    not growth), and ends when ``budget`` objects were visited or its time is up.
    ``starts`` are ``(name, namespace)`` pairs.
    """
    modules = frozenset(name for name, _ in starts)
    level: list[object] = [namespace for _, namespace in starts]
    levels: list[tuple[list[object], list[object]]] = [(level, [None] * len(level))]
    # Only the objects followed are remembered: while tracing, each id() is an int made,
    # and traced, per object (measured: 5,000 of them were a third of the search).
    followed: set[int] = set(map(id, level))
    hits: list[Traced] = []
    deadline = time.monotonic() + _SEARCH_SECONDS
    last = _SEARCH_DEPTH
    for depth in range(_SEARCH_DEPTH):
        if depth > last or not level or budget <= 0 or time.monotonic() >= deadline:
            break
        children: list[object] = []
        spans: list[tuple[object, int, int]] = []
        for holder in level:
            start = len(children)
            children += _children(holder, modules)
            spans.append((holder, start, len(children)))
            if len(children) >= budget or time.monotonic() >= deadline:
                break
        budget -= len(children)
        traced = _tracebacks(children, young)
        found: list[object] = []
        owners: list[object] = []
        levels.append((found, owners))
        for holder, start, stop in spans:
            held = children[start:stop]
            frames = traced[start:stop]
            if not any(frames):
                # A namespace is followed whatever its size: a module of many names is
                # where registries live, not a mass of data.
                if stop - start <= _WIDE or depth == 0:
                    for child in itertools.filterfalse(_is_leaf, held):
                        if id(child) not in followed:
                            followed.add(id(child))
                            found.append(child)
                            owners.append(holder)
                continue
            for child, made in itertools.compress(zip(held, frames, strict=True), frames):
                if made and not machinery(made) and len(hits) < _HITS:
                    hits.append((child, made))
                    path = [*_path(levels[:-1], holder), child]
                    root = next(name for name, ns in starts if ns is path[0])
                    findings.paths.append((root, path))
        if hits and last == _SEARCH_DEPTH:
            last = depth + 1
        level = found
    return hits


def _is_leaf(obj: object) -> bool:
    # type(), not isinstance(): see _children.
    return issubclass(type(obj), _LEAVES)


def _held_value(holder: object, child: object) -> object:
    """The value stored under ``child`` when ``child`` is a dict key, else ``child``.

    A line like ``cache[len(cache)] = record`` allocates the key; what the chain should
    end at is the record the key holds.
    """
    if issubclass(type(holder), dict):
        mapping: dict[object, object] = holder  # type: ignore[assignment]
        try:
            if child in mapping:
                return mapping[child]
        except TypeError:  # unhashable: a value, not a key
            pass
    return child


def _path(levels: list[tuple[list[object], list[object]]], target: object) -> list[object]:
    """From a root namespace (the first level) down to ``target`` (in the last level)."""
    path = [target]
    for objects, holders in reversed(levels[1:]):
        # Found by identity in C: a generator over the level made a traced tuple per object.
        at = list(map(operator.is_, objects, itertools.repeat(path[-1]))).index(True)
        path.append(holders[at])
    path.reverse()
    return path


def _fd_owners(fds: set[int], files: list[Traced]) -> tuple[list[str], Line | None]:
    """Name the file and socket objects holding ``fds``, and where they were made; and the
    first user's line among those."""
    if not fds:
        return [], None
    owners: Counter[str] = Counter()
    first: Line | None = None
    for obj, frames in files:
        try:
            fd = obj.fileno()  # type: ignore[attr-defined]
        except (OSError, ValueError):
            continue
        if fd not in fds:
            continue
        mine = user_frame(frames)
        first = first or mine
        frame = mine or frames[0]
        owners[f"{diagnosis.type_name(type(obj))} opened at {shown(frame[0])}:{frame[1]}"] += 1
    texts = [f"{text} (x{count})" if count > 1 else text for text, count in owners.most_common()]
    return texts, first


def survey(
    young: list[object],
    roots: Sequence[tuple[str, object]] = (),
    modules: Sequence[tuple[str, dict[str, Any]]] = (),
    prefer: Sequence[str] = (),
    in_flight: InFlight = frozenset(),
) -> Findings:
    """Gather the traces, the survivors among ``young`` and the holders of young objects;
    call while tracemalloc traces.

    ``modules`` are the user's modules (:func:`user_modules`) and ``roots`` other
    namespaces (the test's fixtures, the locals of its frames) where a holder of the growth
    may be found: first the modules of the ``prefer`` files and those whose lines allocated
    the growth, with ``roots``, then the others. Call :meth:`Findings.finish` on the result
    once tracing has stopped. What the ``in_flight`` calls of other threads made
    (:func:`in_flight_calls`) is left out.
    """
    raw = _tracemalloc._get_traces()
    if in_flight:
        raw = [trace for trace in raw if not _made_in_flight(trace[2], in_flight)]
    findings = Findings(
        tracemalloc.Snapshot(raw, tracemalloc.get_traceback_limit()), in_flight=in_flight
    )
    findings.survivors.append(_with_held(young))
    ids = set(map(id, young))
    top = {*prefer, *_top_files(findings.snapshot)}
    first = [module for module in modules if module[1].get("__file__") in top]
    rest = [module for module in modules if module[1].get("__file__") not in top]
    hits = _search(findings, [*first, *roots], _SEARCH_OBJECTS, ids)
    if not hits and rest:
        hits = _search(findings, rest, _SEARCH_OBJECTS // 4, ids)
    if not hits:
        # Held by a library's own registry (logging's loggers, a signal's receivers): the
        # modules whose code allocated the growth hold it, found going forwards from them
        # at the cost of a few hundred objects, where a backward search scans the heap.
        hits = _search(findings, _library_modules(findings.snapshot), _SEARCH_OBJECTS // 4, ids)
        findings.library_paths, findings.paths = findings.paths, []
    findings.survivors.append(hits)
    # Concrete classes only: an isinstance() check against the io.IOBase ABC would fill
    # its cache with every type on the heap. Buffered and text files wrap a FileIO.
    files = (obj for obj in young if isinstance(obj, (io.FileIO, socket.socket)))
    findings.files = _traced(files)
    return findings


def backward_chain(candidates: list[object]) -> list[str] | None:
    """The first referrer chain found from the candidates, within one overall budget."""
    deadline = time.monotonic() + _BACKWARD_SECONDS
    while candidates and time.monotonic() < deadline:
        chain = diagnosis.referrer_chain(
            candidates.pop(0), time_budget=_BACKWARD_SECONDS, skip_module=machinery_module
        )
        if chain:
            return chain
    return None


def new_threads(before: frozenset[int], findings: Findings | None) -> list[tuple[str, Line | None]]:
    """Threads started since ``before`` (idents) and still running, grouped by what they
    run: how many, where they run now, and the user's line that started them (read from
    the allocation traceback of those the traced call started), most first."""
    frames = sys._current_frames()
    groups: dict[str, list[Any]] = {}
    for ident, thread in list(threading._active.items()):  # type: ignore[attr-defined]
        if ident in before or thread is threading.current_thread():
            continue
        running = _running(frames.get(ident))
        what = running or f"{diagnosis.type_name(type(thread))} {_target(thread)}"
        made = findings.created.get(id(thread)) if findings is not None else None
        entry = groups.setdefault(what, [0, None])
        entry[0] += 1
        entry[1] = entry[1] or (user_frame(made) if made else None)
    return _grouped(groups, "running", "started")


def new_tasks(before: frozenset[int], findings: Findings | None) -> list[tuple[str, Line | None]]:
    """asyncio tasks created since ``before`` (ids) and still pending, grouped by where
    they wait: how many, where, and the user's line that created them (read from the
    allocation traceback of those the traced call created), most first."""
    from runtime_guard._leakcheck.readings import pending_tasks

    groups: dict[str, list[Any]] = {}
    for task in pending_tasks():
        if id(task) in before:
            continue
        waiting = _awaiting(task) or _target(task)
        made = findings.created.get(id(task)) if findings is not None else None
        entry = groups.setdefault(waiting, [0, None])
        entry[0] += 1
        entry[1] = entry[1] or (user_frame(made) if made else None)
    return _grouped(groups, "waiting", "created")


def _grouped(groups: dict[str, list[Any]], doing: str, made: str) -> list[tuple[str, Line | None]]:
    found = []
    for what, (count, line) in sorted(groups.items(), key=lambda item: -item[1][0]):
        text = f"{count} x {doing} {what}"
        if line is not None:
            text += f", {made} at {_at(line)}"
        found.append((text, line))
    return found


def _target(obj: Any) -> str:
    """What a thread or task was given to run, by name."""
    target = getattr(obj, "_target", None)
    if target is None and hasattr(obj, "get_coro"):
        target = obj.get_coro()
    name = getattr(target, "__qualname__", None)
    return f"({name})" if name else ""


def _at(line: Line) -> str:
    return f"{shown(line[0])}:{line[1]} in {functions.function_at(line[0], line[1])}"


def _running(frame: types.FrameType | None) -> str:
    """The innermost user frame of a thread's stack, as ``file:line in function``."""
    while frame is not None:
        code = frame.f_code
        if kind(code.co_filename) is USER:
            return f"{shown(code.co_filename)}:{frame.f_lineno} in {code.co_qualname}"
        frame = frame.f_back
    return ""


def _awaiting(task: Any) -> str:
    """The innermost user frame a task's coroutine is suspended in."""
    try:
        coro = task.get_coro()
    except Exception:
        return ""
    found = ""
    for _ in range(32):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        if kind(code.co_filename) is USER:
            found = f"{shown(code.co_filename)}:{frame.f_lineno} in {code.co_qualname}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if coro is None:
            break
    return found
