"""What a leaky round left behind: its survivors by type and line, and what holds them.

Everything here that needs an object's allocation traceback runs while tracemalloc still
traces, inside :func:`survey`, on a thread of its own (:func:`on_short_stack`), and reads
the tracebacks in bulk from threads that run no Python frame at all. Only
objects allocated since the baseline are looked at: the baseline heap is frozen
(``gc.freeze()``), so ``gc.get_objects()`` lists the young objects alone. Walking the whole
heap instead cost 40 ms untraced and 100 ms traced per failing test on a pytest heap of
58,000 objects (measured), against a few ms here.
"""

from __future__ import annotations

import _thread
import _tracemalloc
import fnmatch
import functools
import gc
import io
import itertools
import operator
import os
import re
import socket
import sys
import time
import tracemalloc
import types
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from runtime_guard import _frames, diagnosis
from runtime_guard.diagnosis import functions

__all__ = [
    "PYTEST_FILES",
    "Findings",
    "excluded",
    "machinery",
    "on_short_stack",
    "shown",
    "stack_roots",
    "survey",
]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PYTEST_FILES = ("*/_pytest/*", "*/pluggy/*")
"""pytest's own call machinery: its frames are dropped from allocation tracebacks."""

# Allocations whose most recent frame is here are the measurement, pytest's own call
# machinery or a one-time import; none of them is the code under test.
_EXCLUDED_FILES = (
    os.path.join(_PACKAGE_DIR, "*"),
    tracemalloc.__file__,
    "<frozen importlib._bootstrap>",
    "<frozen importlib._bootstrap_external>",
    *PYTEST_FILES,
)

# One expression compiled at import: fnmatch compiles into a cache that settling empties each
# round, so matching a new file name mid-check left fnmatch's strings among the survivors.
_EXCLUDED_RE = re.compile("|".join(fnmatch.translate(pattern) for pattern in _EXCLUDED_FILES))

_ATOMIC = (str, bytes, int, float, complex, bytearray)

# Objects kept per allocating line: candidates for the referrer chain.
_CANDIDATES = 5

# The forward search from a module stops after this many objects or this long.
_SEARCH_OBJECTS = 5_000
_SEARCH_SECONDS = 0.05
_SEARCH_DEPTH = 6

Line = tuple[str, int]

# Never followed by the forward search: leaves, or paths into everything.
_LEAVES = (*_ATOMIC, types.ModuleType, type(None), bool)

# Below this many reads a thread costs more than it saves.
_FRAMELESS_MIN = 64

_T = TypeVar("_T")


@functools.cache
def excluded(filename: str) -> bool:
    """True for files whose allocations are the check's own or pytest's, not the body's."""
    return _EXCLUDED_RE.match(filename) is not None


_stdlib = _frames.is_stdlib


def machinery(frames: tuple[Line, ...]) -> bool:
    """True when an allocation is the check's own, or pytest's: its first frame outside the
    standard library is one of theirs (a ``posixpath`` call of ours is ours)."""
    for filename, _ in frames:
        if excluded(filename):
            return True
        if not _stdlib(filename):
            return False
    return False


def shown(filename: str) -> str:
    """A path relative to the working directory when under it, as pytest shows paths."""
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


Traced = tuple[object, tuple[Line, ...]]
"""An object allocated while tracing, with its raw frames (most recent first)."""


@dataclass
class Findings:
    """What :func:`survey` gathered while the traces were there; :meth:`finish` reads it.

    Gathering is C iterators only: while tracing, every object Python code makes (an int
    from ``id()``, a dict entry) is itself a traced allocation, each costing a stack walk.
    Counting and naming happen in :meth:`finish`, once tracing has stopped (measured over
    five leaky bodies, with the frameless reads below: 173 ms of survey down to 54 ms).
    """

    snapshot: tracemalloc.Snapshot
    """tracemalloc's traces at the end of the rounds."""
    top: Line | None = None
    """The line whose allocations grew most."""
    survivors: list[list[Traced]] = field(default_factory=list)
    """Objects allocated while tracing and alive at the end, in batches."""
    path: list[object] | None = None
    """From a root namespace down to a survivor of :attr:`top`, when the search found one."""
    root: str = ""
    """The name of the path's root namespace."""
    files: list[Traced] = field(default_factory=list)
    """Young file and socket objects, candidates for the owners of new descriptors."""
    types: Counter[str] = field(default_factory=Counter)
    """Survivors by type name (after :meth:`finish`)."""
    held: list[object] = field(default_factory=list)
    """A few survivors allocated at :attr:`top`: where a referrer chain may start (after
    :meth:`finish`, when the search found no path)."""
    chain: list[str] | None = None
    """Links from the root namespace to a survivor of :attr:`top` (after :meth:`finish`)."""
    fd_owners: list[str] = field(default_factory=list)
    """File and socket objects holding the new descriptors (after :meth:`finish`)."""

    def finish(self, new_fds: set[int]) -> None:
        """Count, pick and name what was gathered; call once tracing has stopped."""
        seen: set[int] = set()
        by_type: Counter[type] = Counter()
        containers: list[object] = []
        atomic: list[object] = []
        for batch in self.survivors:
            for obj, frames in batch:
                if id(obj) in seen or machinery(frames):
                    continue
                seen.add(id(obj))
                by_type[type(obj)] += 1
                if frames[0] == self.top:
                    # Containers first: an untracked string inside an untracked record has
                    # no referrer that gc.get_referrers can see.
                    kept = atomic if isinstance(obj, _ATOMIC) else containers
                    if len(kept) < _CANDIDATES:
                        kept.append(obj)
        self.survivors.clear()
        for cls, count in by_type.items():
            self.types[diagnosis.type_name(cls)] += count
        if self.path is not None:
            self.chain = diagnosis.chain_from_path(self.root, self.path)
            self.path = None
        else:
            self.held = (containers + atomic)[:_CANDIDATES]
        self.fd_owners = _fd_owners(new_fds, self.files)
        self.files.clear()


def _traced(objects: Iterable[object]) -> list[Traced]:
    """The objects that have a traceback, each with it: one C pass, no Python per object."""
    objects = list(objects)
    frames = _frameless_map(_raw_traceback, objects)
    return list(itertools.compress(zip(objects, frames, strict=True), frames))


def _frameless_map(fn: Callable[[object], _T], items: list[object]) -> list[_T]:
    """``list(map(fn, items))`` on a thread that runs no Python frame at all.

    Reading a traceback makes a tuple per frame, and while tracing each of those is a
    traced allocation whose own traceback is read from the calling stack. On a thread
    started straight into C (``list.extend`` over a ``map``) that stack is empty (measured on
    leaky bodies: 200 survivors among 1,400 objects read in 9.7 ms from the survey's own
    thread, in 3.9 ms here).
    """
    out: list[_T] = []
    if len(items) < _FRAMELESS_MIN:  # fewer reads than a thread's start costs
        return list(map(fn, items))
    before = _thread._count()
    try:
        _thread.start_new_thread(out.extend, (map(fn, items),))
    except RuntimeError:  # no thread to be had: the same reads, only slower
        return list(map(fn, items))
    deadline = time.monotonic() + 2.0
    # The count goes up inside the new thread, so completion is read from the output.
    while len(out) < len(items) and time.monotonic() < deadline:
        time.sleep(0.0001)
    while _thread._count() > before and time.monotonic() < deadline:
        time.sleep(0.0001)
    if len(out) != len(items):  # it failed (out of memory): read them here instead
        return list(map(fn, items))
    return out


def _with_held(objects: list[object]) -> list[Traced]:
    """``objects``, and the untracked ones they hold two levels down, that have tracebacks.

    CPython stops tracking dicts and tuples of atomic values (a record such as
    ``{"id": 1, "path": "..."}``, a cache dict of strings), so ``gc.get_objects()`` lists
    their holders only.
    """
    untracked = list(itertools.filterfalse(gc.is_tracked, gc.get_referents(*objects)))
    # Atomic objects have no referents: asking about all of them costs less than sorting
    # out the dicts and tuples in a Python loop.
    deeper = itertools.filterfalse(gc.is_tracked, gc.get_referents(*untracked))
    return _traced(itertools.chain(objects, untracked, deeper))


def _top_line(latest: tracemalloc.Snapshot, baseline: tracemalloc.Snapshot | None) -> Line | None:
    """The line whose traced allocations grew most from ``baseline`` (or from nothing)."""
    by_traceback: dict[tuple[Line, ...], int] = {}
    # Raw traces are (domain, size, frames most recent first, depth); summing them here
    # cost a tenth of Snapshot.statistics("lineno"), which makes a Trace, a Traceback and a
    # Frame per trace, each itself traced (measured on leaky bodies: 8 ms to 0.8).
    for sign, snapshot in ((1, latest), (-1, baseline)):
        if snapshot is None:
            continue
        for trace in _raw_traces(snapshot):
            frames = trace[2]
            by_traceback[frames] = by_traceback.get(frames, 0) + sign * trace[1]
    sizes: dict[Line, int] = {}
    for frames, size in by_traceback.items():
        if frames and not machinery(frames):
            sizes[frames[0]] = sizes.get(frames[0], 0) + size
    best: Line | None = None
    best_size = 0
    for line, size in sizes.items():
        if size > best_size:
            best, best_size = line, size
    return best


def _raw_traces(snapshot: tracemalloc.Snapshot) -> Iterable[tuple[Any, ...]]:
    raw = getattr(snapshot.traces, "_traces", None)
    if isinstance(raw, list):
        return raw
    # Where the private list is gone, the public traces give the same figures.
    return (
        (trace.domain, trace.size, tuple((f.filename, f.lineno) for f in reversed(trace.traceback)))
        for trace in snapshot.traces
    )


def stack_roots() -> list[tuple[str, object]]:
    """Locals of the calling frames that run the user's code (not pytest's, not ours)."""
    roots: list[tuple[str, object]] = []
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if not excluded(code.co_filename) and not code.co_filename.startswith("<"):
            roots.append((f"{code.co_qualname}.<locals>", frame.f_locals))
        frame = frame.f_back  # type: ignore[assignment]
    return roots


def _children(holder: object, module_name: str) -> Iterable[object]:
    """What the forward search follows from ``holder``: data, not code or other modules."""
    if isinstance(holder, dict):
        # Values first: a cache's values are what it holds; its keys lead to the same chain.
        return itertools.chain(holder.values(), holder.keys())
    if isinstance(holder, type):
        # A class of this module holds class-level registries; other classes lead to the
        # whole type hierarchy.
        return holder.__dict__.values() if holder.__module__ == module_name else ()
    if isinstance(holder, types.FunctionType):
        if holder.__module__ != module_name:
            return ()
        cells = [cell.cell_contents for cell in holder.__closure__ or () if _filled(cell)]
        return itertools.chain(
            holder.__defaults__ or (), (holder.__kwdefaults__ or {}).values(), cells
        )
    if isinstance(
        holder, (types.ModuleType, types.CodeType, types.FrameType, types.BuiltinFunctionType)
    ):
        return ()
    return gc.get_referents(holder)


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018  (an empty cell raises)
    except ValueError:
        return False
    return True


def _search(findings: Findings, top: Line, roots: Sequence[tuple[str, object]]) -> None:
    """Breadth-first from ``roots`` and ``top``'s module to a survivor allocated at ``top``.

    On success sets the findings' path and root, and adds the holder's other survivors (the
    rest of the growth). Leaked objects usually sit in a global of the module that
    allocates them (a list, a cache dict, a class-level registry) or in something the test
    holds (a fixture's app, a local), and are often untracked records that
    ``gc.get_objects()`` never lists. ``roots`` are ``(name, namespace)`` pairs: a dict of
    names to the objects they hold. Levels are lists walked by C iterators.
    """
    from runtime_guard._frames import is_library

    # A library's own globals rarely hold what user code leaks through it, and walking a
    # large library module spent the whole budget (measured: redis.client, 50 ms a test).
    module = None if is_library(top[0]) else functions.module_globals(top[0])
    starts = list(roots)
    if module is not None:
        starts.insert(0, module)
    module_name = module[0] if module is not None else ""
    # Each level: the objects met, and beside each the holder it was met in.
    levels: list[tuple[list[object], list[object]]] = []
    level: list[object] = [namespace for _, namespace in starts]
    levels.append((level, [None] * len(level)))
    budget = _SEARCH_OBJECTS
    deadline = time.monotonic() + _SEARCH_SECONDS
    for _ in range(_SEARCH_DEPTH):
        found: list[object] = []
        holders: list[object] = []
        levels.append((found, holders))
        for holder in level:
            if isinstance(holder, _LEAVES):
                continue
            children = list(_children(holder, module_name))
            # Each holder's children are read as they are met, so the search ends at the
            # first holder with the growth in it, not after its whole level (other globals
            # of the module may hold thousands of older objects).
            traced = _frameless_map(_raw_traceback, children)
            hits = list(itertools.compress(zip(children, traced, strict=True), traced))
            for child, frames in hits:
                if frames[0] == top:
                    # The holder's other new items are the rest of the growth; one level
                    # down is enough to count them, and each traceback read costs while
                    # tracing.
                    findings.survivors.append(hits)
                    findings.path = [*_path(levels[:-1], holder), _held_value(holder, child)]
                    findings.root = next(name for name, ns in starts if ns is findings.path[0])
                    return
            found += children
            holders += itertools.repeat(holder, len(children))
            budget -= len(children)
            if budget <= 0 or time.monotonic() >= deadline:
                return
        level = found


def _held_value(holder: object, child: object) -> object:
    """The value stored under ``child`` when ``child`` is a dict key, else ``child``.

    A line like ``cache[len(cache)] = record`` allocates the key; what the chain should
    end at is the record the key holds.
    """
    if isinstance(holder, dict):
        try:
            if child in holder:
                return holder[child]
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


def _fd_owners(fds: set[int], files: list[Traced]) -> list[str]:
    """Name the file and socket objects holding ``fds``, and where they were made."""
    if not fds:
        return []
    from runtime_guard._frames import is_library

    owners: Counter[str] = Counter()
    for obj, frames in files:
        try:
            fd = obj.fileno()  # type: ignore[attr-defined]
        except (OSError, ValueError):
            continue
        if fd not in fds:
            continue
        frame = next((f for f in frames if not is_library(f[0])), frames[0])
        owners[f"{diagnosis.type_name(type(obj))} opened at {shown(frame[0])}:{frame[1]}"] += 1
    return [f"{text} (x{count})" if count > 1 else text for text, count in owners.most_common()]


def survey(
    young: list[object],
    baseline: tracemalloc.Snapshot | None,
    roots: Sequence[tuple[str, object]] = (),
) -> Findings:
    """Gather the traces and the survivors among ``young``; call while tracemalloc traces.

    ``baseline`` is the snapshot the growth is measured from, None when tracing began at
    the baseline (then every trace is growth). ``roots`` are namespaces, besides the
    growing line's module, where a holder of the growth may be found. Call
    :meth:`Findings.finish` on the result once tracing has stopped.
    """
    # The snapshot's raw traces are read frameless too: a tuple per trace and per frame.
    call: Callable[[Any], list[Any]] = operator.call
    raw = _frameless_map(call, [_tracemalloc._get_traces])[0]
    findings = Findings(tracemalloc.Snapshot(raw, tracemalloc.get_traceback_limit()))
    findings.top = _top_line(findings.snapshot, baseline)
    findings.survivors.append(_with_held(young))
    if findings.top is not None:
        _search(findings, findings.top, roots)
    # Concrete classes only: an isinstance() check against the io.IOBase ABC would fill
    # its cache with every type on the heap. Buffered and text files wrap a FileIO.
    files = (obj for obj in young if isinstance(obj, (io.FileIO, socket.socket)))
    findings.files = _traced(files)
    return findings


def on_short_stack(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` on a fresh thread, waited for.

    While tracemalloc runs, each allocation costs a walk of the calling stack; the survey
    allocates as it goes, and from a thread of its own the stack is a couple of frames
    instead of pytest's eight or more (measured on leaky bodies: 45-55% less).
    ``_thread`` rather than ``threading``: a Thread object and its lock and event would
    themselves be allocations the survey counts.
    """
    outcome: list[Any] = []
    done = _thread.allocate_lock()
    done.acquire()

    def run() -> None:
        try:
            outcome.append((True, fn(*args)))
        except BaseException as exc:  # handed back to the caller's thread below
            outcome.append((False, exc))
        finally:
            done.release()

    before = _thread._count()
    try:
        _thread.start_new_thread(run, ())
    except RuntimeError:  # no thread to be had: the same survey, only slower
        return fn(*args)
    done.acquire()
    # tracemalloc is stopped soon after, and stopping it while a thread is ending can crash
    # an affected Python (CPython gh-128679, see diagnosis.stop_is_safe): wait until the
    # thread is counted out, then a moment for the last of its teardown.
    deadline = time.monotonic() + 1.0
    while _thread._count() > before and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(0.002)
    ok, value = outcome.pop()
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
