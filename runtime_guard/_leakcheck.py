"""Leak checks for tests: rerun a body, settle the heap, judge figures by CPython's ``-R`` rule.

The pytest plugin (``runtime_guard.pytest_plugin``) only wires markers, options and the
fixture to :class:`LeakCheck`; everything that measures and judges lives here. The rule is
CPython's refleak hunt: discard warm-up runs, then call it a leak only when a figure grew in
every measured round, beyond the tolerance. A round in which nothing grew ends the check
early: no figure can have grown in every round any more, so the verdict is already known.
"""

from __future__ import annotations

import _thread
import _tracemalloc
import asyncio
import contextlib
import dataclasses
import fnmatch
import functools
import gc
import inspect
import itertools
import logging
import os
import re
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from runtime_guard import diagnosis
from runtime_guard._sizes import SIZE_FORM, format_size, parse_size

__all__ = [
    "CHECKS",
    "Figure",
    "LeakBlock",
    "LeakCheck",
    "LeakCheckOptions",
    "LeakChecker",
    "LeakResult",
    "Unreleased",
    "settle",
]

_log = logging.getLogger("runtime_guard")

CHECKS = ("heap", "objects", "fds")
"""Figures a check may judge; ``check=`` picks among them."""

# The bytes tolerance counted in objects: 64 bytes is about the smallest GC-tracked object
# with its GC header, so a tolerance never forgives fewer objects than it forgives bytes.
_BYTES_PER_OBJECT = 64

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

_PYTEST_FILES = ("*/_pytest/*", "*/pluggy/*")

# Allocations whose most recent frame is here are the measurement, pytest's own call
# machinery or a one-time import; none of them is the code under test.
_EXCLUDED_FILES = (
    os.path.join(_PACKAGE_DIR, "*"),
    tracemalloc.__file__,
    "<frozen importlib._bootstrap>",
    "<frozen importlib._bootstrap_external>",
    *_PYTEST_FILES,
)


# -- options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeakCheckOptions:
    """What one leak check does; :meth:`replace` validates keyword overrides."""

    rounds: int = 5
    """Measured runs after the warm-up; the verdict needs growth in every one."""
    warmup: int = 2
    """Runs discarded before measuring: first-call caches and lazy singletons fill here."""
    tolerance: int = 16_000
    """Bytes a figure may grow per round without counting as growth."""
    tolerance_text: str = "16KB"
    """The tolerance as the user wrote it, for messages."""
    check: tuple[str, ...] = CHECKS
    """Which figures are judged."""
    track: tuple[str | type, ...] = ()
    """Extra classes (or dotted names) tracked for the check; unreleased ones fail it."""
    unreleased: bool = False
    """Fail on any tracked client created and still unreleased at the end."""
    single: bool = False
    """Run the body once and judge unreleased clients only (``no_unreleased`` alone)."""

    def once(self) -> LeakCheckOptions:
        """These options for one plain run that judges unreleased clients only."""
        return dataclasses.replace(self, single=True, warmup=0, rounds=1, check=())

    def replace(self, **overrides: Any) -> LeakCheckOptions:
        """Return a copy with ``overrides`` (``None`` values ignored) validated.

        Raises :class:`ValueError` naming the argument, the value and the accepted form.
        """
        values: dict[str, Any] = {}
        for name, value in overrides.items():
            if value is None:
                continue
            if name in ("rounds", "warmup"):
                values[name] = _count(name, value, minimum=1 if name == "rounds" else 0)
            elif name == "tolerance":
                try:
                    values["tolerance"] = parse_size(value)
                except ValueError:
                    raise ValueError(
                        f"tolerance={_arg(value)} is not accepted: expected {SIZE_FORM}"
                    ) from None
                values["tolerance_text"] = (
                    value.strip() if isinstance(value, str) else format_size(values["tolerance"])
                )
            elif name == "check":
                values["check"] = _checks(value)
            elif name == "track":
                values["track"] = _tracked(value)
            elif name == "unreleased":
                values["unreleased"] = bool(value)
            else:
                raise ValueError(
                    f"unknown leak-check argument {name!r}; accepted: rounds, warmup, "
                    "tolerance, track, check"
                )
        return dataclasses.replace(self, **values)


def _count(name: str, value: Any, minimum: int) -> int:
    # isdecimal, not isdigit: int() refuses digits such as "²"; and int() refuses strings
    # of thousands of digits, so a count longer than any sensible one stays a string.
    if isinstance(value, str) and value.strip().isdecimal() and len(value.strip()) <= 18:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name}={_arg(value)} is not accepted: expected a whole number of at least {minimum}"
        )
    return value


def _checks(value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else _items(value)
    unknown = [item for item in items if item not in CHECKS]
    if unknown or not items:
        raise ValueError(
            f"check={_arg(value)} is not accepted: expected some of {', '.join(map(repr, CHECKS))}"
        )
    return tuple(name for name in CHECKS if name in items)


def _tracked(value: Any) -> tuple[str | type, ...]:
    items = (value,) if isinstance(value, (str, type)) else _items(value)
    for item in items:
        if not isinstance(item, (str, type)):
            raise ValueError(
                f"track={_arg(value)} is not accepted: expected classes or dotted names "
                "such as 'redis.Redis'"
            )
    return items


def _arg(value: Any) -> str:
    """``repr(value)`` short enough for a one-line message, whatever was passed."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _items(value: Any) -> tuple[Any, ...]:
    """``value`` as a tuple, or ``(value,)`` when it is no collection (refused by the caller)."""
    try:
        return tuple(value)
    except TypeError:
        return (value,)


# -- settling -----------------------------------------------------------------------------


def _cache_clearers() -> Iterator[Callable[[], object]]:
    """Clear functions of interpreter and stdlib caches that fill on use and are not leaks.

    Only modules already imported are touched (importing one to clear it would itself
    allocate). The list follows CPython's own refleak hunter (``Lib/test/libregrtest``).
    """
    modules = sys.modules
    yield sys._clear_type_cache
    simple = (
        ("re", "purge"),
        ("linecache", "clearcache"),
        ("struct", "_clearcache"),
        ("urllib.parse", "clear_cache"),
        ("fnmatch", "_compile_pattern.cache_clear"),
        ("tokenize", "_compile.cache_clear"),
        ("inspect", "_filesbymodname.clear"),
        ("inspect", "modulesbyfile.clear"),
        ("filecmp", "_cache.clear"),
        ("importlib.metadata", "FastPath.__new__.cache_clear"),
    )
    for module_name, path in simple:
        target: Any = modules.get(module_name)
        for part in path.split("."):
            target = getattr(target, part, None)
        if callable(target) and not isinstance(target, type):
            yield target
    typing = modules.get("typing")
    yield from getattr(typing, "_cleanups", ())
    # ABC caches are left alone, unlike in CPython's hunt: they hold weak references that
    # die with their classes, and clearing them makes every round re-allocate them.


def _clear_pytest_log_capture() -> None:
    # pytest keeps every log record of the call phase (for caplog and the report); records
    # of earlier runs would look like growth, and a body asserting on caplog.records should
    # see its own run's records only.
    capture = sys.modules.get("_pytest.logging")
    handler_type = getattr(capture, "LogCaptureHandler", None)
    if handler_type is None:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, handler_type):
            handler.clear()


def settle() -> None:
    """Bring the heap to its floor: clear caches that are not leaks, then collect fully.

    A full collection also empties the interpreter's free lists (floats, tuples, dicts),
    whose blocks would otherwise still count as allocated.
    """
    for clear in _cache_clearers():
        # A cache that cannot be cleared is measured as it is.
        with contextlib.suppress(Exception):
            clear()
    _clear_pytest_log_capture()
    gc.collect()
    # Finalizers run by that collection may have left new cycles; they are young.
    gc.collect(0)


# -- figures ------------------------------------------------------------------------------


def _open_fds() -> dict[int, str]:
    """Open descriptors and what they point at (``/proc/self/fd``), empty where unknown."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return {}
    found: dict[int, str] = {}
    for name in names:
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except (OSError, ValueError):  # the listing's own descriptor is gone already
            continue
    return found


# One expression compiled at import: fnmatch compiles into a cache that settle() empties each
# round, so matching a new file name mid-check left fnmatch's strings among the survivors.
_EXCLUDED_RE = re.compile("|".join(fnmatch.translate(pattern) for pattern in _EXCLUDED_FILES))


@functools.cache
def _excluded(filename: str) -> bool:
    return _EXCLUDED_RE.match(filename) is not None


@dataclass
class Figure:
    """One judged figure across the measured rounds."""

    name: str
    """``heap``, ``objects``, ``fds`` or ``clients``."""
    values: list[int] = field(default_factory=list)
    """Reading at the baseline, then after each measured round."""
    threshold: int = 0
    """Growth per round above which a round counts as growing."""

    @property
    def deltas(self) -> list[int]:
        """Growth in each measured round."""
        return [b - a for a, b in zip(self.values, self.values[1:], strict=False)]

    @property
    def grew_every_round(self) -> bool:
        """True when every measured round grew beyond :attr:`threshold`."""
        deltas = self.deltas
        return bool(deltas) and all(delta > self.threshold for delta in deltas)

    @property
    def per_round(self) -> float:
        """Mean growth per measured round."""
        deltas = self.deltas
        return sum(deltas) / len(deltas) if deltas else 0.0


@dataclass
class Unreleased:
    """A tracked client created during the check and neither released nor collected."""

    type_name: str
    """Qualified class name."""
    site: str
    """Creation site, ``file:line in function``."""
    count: int = 1
    """How many such clients were created at that site."""


@dataclass
class LeakResult:
    """What a check measured and concluded; :meth:`message` is the failure text."""

    label: str
    """What was checked (the test id or the callable's name)."""
    options: LeakCheckOptions
    """The options the check ran with."""
    rounds_run: int = 0
    """Measured rounds actually run (fewer than asked when a round grew nothing)."""
    figures: dict[str, Figure] = field(default_factory=dict)
    """Figures by name."""
    blocks: list[int] = field(default_factory=list)
    """``sys.getallocatedblocks()`` at the baseline and after each round (reported only)."""
    sites: list[diagnosis.AllocationSite] = field(default_factory=list)
    """Allocation sites of the growth over the measured rounds, biggest first."""
    types: list[diagnosis.TypeGrowth] = field(default_factory=list)
    """Objects allocated during the measured rounds and still alive, by type (``after``)."""
    chain: list[str] | None = None
    """Referrer chain from a module-level global to one of the grown objects."""
    new_fds: list[str] = field(default_factory=list)
    """What descriptors opened during the rounds and still open point at."""
    fd_owners: list[str] = field(default_factory=list)
    """Open file or socket objects holding those descriptors, with their allocation site."""
    unreleased: list[Unreleased] = field(default_factory=list)
    """Tracked clients still unreleased at the end."""

    @property
    def grown(self) -> list[Figure]:
        """Judged figures that grew in every measured round."""
        return [figure for figure in self.figures.values() if figure.grew_every_round]

    @property
    def leaked(self) -> bool:
        """True when the check fails."""
        return bool(self.grown) or (self.options.unreleased and bool(self.unreleased))

    def message(self, verbose: bool = False) -> str:
        """The failure text: short by default, every detail with ``verbose``."""
        return _render(self, verbose)

    def __str__(self) -> str:
        return self.message() if self.leaked else f"no leak in {self.label}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "label": self.label,
            "leaked": self.leaked,
            "rounds_run": self.rounds_run,
            "warmup": self.options.warmup,
            "tolerance": self.options.tolerance,
            "figures": {
                name: {"values": list(f.values), "deltas": f.deltas, "grew": f.grew_every_round}
                for name, f in self.figures.items()
            },
            "blocks": list(self.blocks),
            "sites": [site.to_dict() for site in self.sites],
            "types": [growth.to_dict() for growth in self.types],
            "chain": None if self.chain is None else list(self.chain),
            "new_fds": list(self.new_fds),
            "fd_owners": list(self.fd_owners),
            "unreleased": [dataclasses.asdict(item) for item in self.unreleased],
        }


# -- tracked clients -----------------------------------------------------------------------


class _ClientWatch:
    """Tracked clients for one check: the known clients plus ``track=``, undone afterwards.

    Only types this watch started tracking are untracked at the end, so a guard (or a test)
    that tracks them itself keeps its tracking.
    """

    def __init__(self, names: tuple[str, ...] | None) -> None:
        self._names = names
        self._added: list[str] = []
        self._known = False
        self._mark = 0

    @classmethod
    def start(cls, track: Sequence[str | type]) -> _ClientWatch:
        from runtime_guard import _clients, tracking

        known = [spec.name for spec in _clients.CLIENTS]
        watch = cls(None)
        if not any(tracking.is_tracked(name) for name in known):
            tracking.enable_known_clients()
            watch._known = True
        names = []
        for item in track:
            tracked_before = tracking.is_tracked(item)
            name = tracking.track(item)
            if not tracked_before:
                watch._added.append(name)
            names.append(name)
        watch._names = tuple(names) if names else None
        return watch

    def mark(self) -> None:
        from runtime_guard import tracking

        self._mark = tracking.marker()

    def _live(self) -> list[Any]:
        from runtime_guard import tracking

        found = tracking.unreleased_since(self._mark, collected=False)
        if self._names is not None:
            found = [item for item in found if item.type in self._names]
        return found

    def count(self) -> int:
        """Tracked clients created since the mark, alive and never released."""
        return len(self._live())

    def unreleased(self) -> list[Unreleased]:
        """The same, grouped by type and creation site, most first."""
        groups: Counter[tuple[str, str]] = Counter()
        for item in self._live():
            groups[(item.type, str(item.site))] += 1
        return [Unreleased(kind, site, count) for (kind, site), count in groups.most_common()]

    def close(self) -> None:
        from runtime_guard import tracking

        for name in self._added:
            tracking.untrack(name)
        if self._known:
            tracking.disable_known_clients()


# -- the check ----------------------------------------------------------------------------


class LeakCheck:
    """Runs a body ``warmup + rounds`` times and judges the figures between runs.

    Iterate it and run the body once per iteration; measurement happens between
    iterations. After the loop :attr:`result` holds the verdict and, for a leak, the
    diagnosis: what survived the measured rounds, where it was allocated and what holds it.
    """

    def __init__(self, options: LeakCheckOptions, label: str = "test body") -> None:
        self.options = options
        self.result = LeakResult(label, options)
        self._clients: _ClientWatch | None = None
        self._session = diagnosis.TracemallocSession()
        self._baseline: tracemalloc.Snapshot | None = None
        self._latest: tracemalloc.Snapshot | None = None
        self._fds: dict[int, str] = {}
        self._bookkeeping = 0
        self.finished = False
        """True once every round has run."""

    def __iter__(self) -> Iterator[int]:
        return self.runs()

    def runs(self) -> Generator[int, None, None]:
        """The runs, one per iteration; close it to stop early (tracemalloc stops too)."""
        options = self.options
        yield from range(options.warmup)
        result = self.result
        figures = result.figures
        thresholds = {
            "heap": options.tolerance,
            "objects": options.tolerance // _BYTES_PER_OBJECT,
            "fds": 0,
            "clients": 0,
        }
        self._clients = _ClientWatch.start(options.track)
        if options.single:
            try:
                yield from self._once()
            finally:
                self._clients.close()
            return
        for name in (*options.check, "clients"):
            figures[name] = Figure(name, threshold=thresholds[name])
        settle()
        # Everything alive now is the baseline: frozen, it is left out of every collection
        # until the rounds end, so settling costs what the rounds allocated, not what the
        # whole process holds (measured in a pytest run: 12 ms down to 3 ms per collection).
        # A host that froze objects itself keeps its own freeze untouched.
        frozen = gc.get_freeze_count() == 0
        if frozen:
            gc.freeze()
        self._session.start()
        self._clients.mark()
        try:
            self._fds = _open_fds() if "fds" in figures else {}
            self._measure()
            for index in range(options.rounds):
                yield options.warmup + index
                self._latest = None
                settle()
                self._measure()
                result.rounds_run += 1
                if not any(f.grew_every_round for f in figures.values()):
                    break
            # Tracing that predates the check traces objects older than the baseline too;
            # then only the objects the freeze left out are known to be new.
            # Objects made since the baseline are also where the owners of descriptors opened
            # since then are: a few thousand objects to look through instead of the heap.
            new = gc.get_objects() if frozen else None
            young = new if not self._session.owned else None
            if frozen:
                frozen = False
                gc.unfreeze()  # the diagnosis needs the whole heap
            if result.grown:
                if self._latest is None and self._baseline is not None:
                    self._latest = tracemalloc.take_snapshot()
                by_line = self._diagnose_traced(young, new)
                young = new = None  # neither list may show up as a referrer in the chain
                self._session.stop()
                top = self._top_line()
                held = by_line.pop(top, []) if top is not None else []
                by_line.clear()
                self._diagnose_untraced()
                result.chain = _chain(held)
                held.clear()
            young = new = None
            result.unreleased = self._clients.unreleased()
            self.finished = True
        finally:
            if frozen:
                gc.unfreeze()
            self._baseline = self._latest = None
            self._session.stop()
            self._clients.close()

    def _once(self) -> Iterator[int]:
        assert self._clients is not None
        self._clients.mark()
        yield 0
        gc.collect()
        self.result.unreleased = self._clients.unreleased()
        self.finished = True

    def _measure(self) -> None:
        figures = self.result.figures
        # The traced total is read first and the bookkeeping below (readings appended to
        # lists, fresh ints) is taken off later readings, so a tolerance of zero still
        # holds for a body that allocates nothing.
        traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        self.result.blocks.append(sys.getallocatedblocks())
        if "objects" in figures:
            # Frozen objects are not listed: this counts what the rounds left, cheaply.
            figures["objects"].values.append(len(gc.get_objects()))
        if "fds" in figures:
            figures["fds"].values.append(len(_open_fds()))
        if "clients" in figures and self._clients is not None:
            figures["clients"].values.append(self._clients.count())
        if "heap" in figures:
            if not tracemalloc.is_tracing():
                # Someone else (the host, an installed guard's own session) stopped it
                # mid-check: the traces are gone, so the heap cannot be judged this time.
                _log.warning(
                    "runtime_guard: tracemalloc was stopped during the leak check of %s; "
                    "its heap figure is not judged",
                    self.result.label,
                )
                del figures["heap"]
                self._baseline = self._latest = None
                return
            if self._baseline is None:
                # One snapshot at the baseline, one more at the end only after a leak: a
                # snapshot per round cost 100-230 ms per round of a leaky body (its traces
                # grow with the leak; measured in a pytest run), the traced total costs
                # nothing. Before this check started tracemalloc, the baseline snapshot's own
                # traces are counted in every reading alike.
                self._baseline = tracemalloc.take_snapshot()
                traced = tracemalloc.get_traced_memory()[0]
            figures["heap"].values.append(traced - self._bookkeeping)
        if tracemalloc.is_tracing():
            self._bookkeeping += tracemalloc.get_traced_memory()[0] - traced

    def _diagnose_traced(
        self, young: list[object] | None, new: list[object] | None
    ) -> dict[tuple[str, int], list[object]]:
        """Descriptor owners and objects made since the baseline: the parts that need live
        tracebacks. Returns a few of those objects for each line that made them."""
        if self._baseline is None or self._latest is None:
            return {}
        counts, by_line = _on_short_stack(_survivors, young)
        self._result_fds(new)
        self.result.types = [
            diagnosis.TypeGrowth(name, 0, count) for name, count in counts.most_common(10)
        ]
        return by_line

    def _top_line(self) -> tuple[str, int] | None:
        """The line whose allocations grew most over the measured rounds.

        Read once tracemalloc has stopped: comparing the snapshots allocates a statistic per
        line, each costing a traceback while tracing (measured: 60 ms of a leaky body).
        """
        if self._baseline is None or self._latest is None:
            return None
        grown = [
            stat
            for stat in self._latest.compare_to(self._baseline, "lineno")
            if stat.size_diff > 0 and not _excluded(stat.traceback[-1].filename)
        ]
        if not grown:
            return None
        top = max(grown, key=lambda stat: stat.size_diff).traceback[-1]
        return (top.filename, top.lineno)

    def _result_fds(self, new: list[object] | None) -> None:
        result = self.result
        if "fds" in result.figures and result.figures["fds"].grew_every_round:
            opened = {fd: target for fd, target in _open_fds().items() if fd not in self._fds}
            result.new_fds = sorted(set(opened.values()))
            result.fd_owners = _fd_owners(set(opened), new)

    def _diagnose_untraced(self) -> None:
        # Naming each site's function parses its source file: slow under tracemalloc,
        # which would trace every node of the syntax tree.
        if self._baseline is not None and self._latest is not None:
            self.result.sites = diagnosis.diff_snapshots(
                self._baseline, self._latest, limit=10, exclude=_PYTEST_FILES
            )


_ATOMIC = (str, bytes, int, float, complex, bytearray)


def _frames_of(obj: object) -> tuple[tuple[str, int], ...] | None:
    """Raw frames, most recent first, where ``_tracemalloc`` lacks the private call."""
    traceback = tracemalloc.get_object_traceback(obj)
    if traceback is None:
        return None
    return tuple((frame.filename, frame.lineno) for frame in reversed(traceback))


_raw_traceback: Callable[[object], Any] = getattr(_tracemalloc, "_get_object_traceback", _frames_of)
_CANDIDATES = 5
_T = TypeVar("_T")


def _survivors(
    young: list[object] | None = None,
) -> tuple[Counter[str], dict[tuple[str, int], list[object]]]:
    """Objects allocated during the measured rounds and alive after them, by type name,
    and a few of them for each line that made them: at the top growing line, the leaked
    objects themselves.

    Every object is looked at: the GC-tracked ones and the untracked ones they hold, two
    levels down, because CPython stops tracking dicts and tuples of atomic values (a leak
    of ``{"id": 1, "path": "..."}`` records, or a cache dict of strings, is invisible to
    ``gc.get_objects()`` alone). Only objects with a tracemalloc traceback were allocated
    since the baseline. Containers come first among the leaked objects: an untracked
    string inside an untracked record has no referrer ``gc.get_referrers`` can see.
    ``young`` replaces the whole heap with the objects known to be new.
    """
    tracked = gc.get_objects() if young is None else young
    untracked = list(itertools.filterfalse(gc.is_tracked, gc.get_referents(*tracked)))
    # Atomic objects have no referents: asking about all of them costs less than sorting
    # out the dicts and tuples in a Python loop.
    deeper = list(itertools.filterfalse(gc.is_tracked, gc.get_referents(*untracked)))
    seen: set[int] = set()
    by_type: Counter[type] = Counter()
    found: dict[tuple[str, int], tuple[list[object], list[object]]] = {}
    parts = (tracked, untracked, deeper)
    try:
        # Most objects predate the baseline and have no traceback; pairing each object with
        # its raw traceback (most recent frame first) in C skips them without a Python call
        # each, and reading the raw frames spares a Traceback and Frame object per survivor
        # (measured on a leaky body's heap: 0.45 s with get_object_traceback per survivor).
        everything = itertools.chain(*parts)
        pairs = zip(itertools.chain(*parts), map(_raw_traceback, everything), strict=True)
        for obj, frames in pairs:
            if not frames or id(obj) in seen:
                continue
            seen.add(id(obj))
            last = frames[0]
            if _excluded(last[0]):
                continue
            by_type[type(obj)] += 1
            entry = found.get(last)
            if entry is None:
                entry = found[last] = ([], [])
            kept = entry[1] if isinstance(obj, _ATOMIC) else entry[0]
            if len(kept) < _CANDIDATES:
                kept.append(obj)
    finally:
        del tracked, untracked, deeper, parts
    names: Counter[str] = Counter()
    for cls, count in by_type.items():
        names[diagnosis.type_name(cls)] += count
    return names, {
        line: (containers + atomic)[:_CANDIDATES] for line, (containers, atomic) in found.items()
    }


def _on_short_stack(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` on a fresh thread, waited for.

    While tracemalloc runs, each allocation costs a walk of the calling stack; the scan of
    the heap allocates a raw traceback per survivor, and from a thread of its own the stack
    is a couple of frames instead of pytest's eight or more (measured on leaky bodies: the
    scan took 45-55% less). ``_thread`` rather than ``threading``: a Thread object and its
    lock and event would themselves be allocations the scan counts.
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
    except RuntimeError:  # no thread to be had: the same scan, only slower
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


def _chain(candidates: list[object]) -> list[str] | None:
    """The first referrer chain found from the candidates, within one overall budget."""
    deadline = time.monotonic() + 1.0
    while candidates and time.monotonic() < deadline:
        chain = diagnosis.referrer_chain(candidates.pop(0), time_budget=0.5)
        if chain:
            return chain
    return None


def _fd_owners(fds: set[int], new: list[object] | None = None) -> list[str]:
    """Name the live file and socket objects that hold ``fds`` and where they were made.

    ``new`` replaces the whole heap with the objects made since the descriptors' baseline
    (measured on a leaky body: 100 ms for the heap, against a few ms).
    """
    if not fds:
        return []
    import io
    import socket

    owners: Counter[str] = Counter()
    # Concrete classes only: an isinstance() check against the io.IOBase ABC would fill
    # its cache with every type on the heap. Buffered and text files wrap a FileIO.
    for obj in gc.get_objects() if new is None else new:
        if not isinstance(obj, (io.FileIO, socket.socket)):
            continue
        try:
            fd = obj.fileno()
        except (OSError, ValueError):
            continue
        if fd not in fds:
            continue
        traceback = tracemalloc.get_object_traceback(obj)
        where = _first_user_frame(traceback) if traceback is not None else "unknown site"
        owners[f"{diagnosis.type_name(type(obj))} opened at {where}"] += 1
    return [f"{text} (x{count})" if count > 1 else text for text, count in owners.most_common()]


def _first_user_frame(traceback: Iterable[tracemalloc.Frame]) -> str:
    from runtime_guard._sites import is_library

    frames = list(reversed(list(traceback)))  # tracemalloc orders oldest first
    frame = next((f for f in frames if not is_library(f.filename)), frames[0])
    return f"{_shown(frame.filename)}:{frame.lineno}"


def _shown(filename: str) -> str:
    """A path relative to the working directory when under it, as pytest shows paths."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if relative.startswith(os.pardir) else relative


# -- the message --------------------------------------------------------------------------

_SHORT_LIMIT = 3

_FIGURE_WORDS = {
    "heap": "Python heap",
    "objects": "live objects",
    "fds": "open file descriptors",
    "clients": "unreleased tracked clients",
}


def _growth(figure: Figure, blocks: Sequence[int]) -> str:
    rounds = len(figure.deltas)
    if figure.name == "heap":
        block_deltas = [b - a for a, b in itertools.pairwise(blocks)]
        per_block = sum(block_deltas) / len(block_deltas) if block_deltas else 0.0
        return (
            f"+{format_size(figure.per_round)}/round ({per_block:+,.0f} blocks/round) "
            f"over {rounds} rounds"
        )
    unit = {"objects": "objects", "fds": "fds", "clients": "clients"}[figure.name]
    return f"{figure.per_round:+,.0f} {unit}/round over {rounds} rounds"


def _per_round(value: float, rounds: int) -> float:
    return value / rounds if rounds else value


def _by_line(sites: Sequence[diagnosis.AllocationSite]) -> list[diagnosis.AllocationSite]:
    """Sites merged by line: several tracebacks through one line are one line to read."""
    merged: dict[tuple[str, int], diagnosis.AllocationSite] = {}
    for site in sites:
        key = (site.filename, site.lineno)
        if key in merged:
            merged[key].size_diff += site.size_diff
            merged[key].count_diff += site.count_diff
        else:
            merged[key] = dataclasses.replace(site)
    return sorted(merged.values(), key=lambda site: -site.size_diff)


def _render(result: LeakResult, verbose: bool) -> str:
    options = result.options
    limit = None if verbose else _SHORT_LIMIT
    lines = [
        f"leak found in {result.label}: "
        f"{options.warmup} warm-up runs, then {result.rounds_run} measured rounds"
    ]
    for figure in result.grown:
        tolerance = f"; tolerance {options.tolerance_text}" if figure.name == "heap" else ""
        if figure.name == "objects":
            tolerance = f"; tolerance {figure.threshold:,} objects"
        lines.append(
            f"  {_FIGURE_WORDS[figure.name]} grew in every round: "
            f"{_growth(figure, result.blocks)}{tolerance}"
        )
        if verbose:
            unit = " B" if figure.name == "heap" else ""
            lines.append(f"    per round: {', '.join(f'{d:+,}{unit}' for d in figure.deltas)}")
    rounds = result.rounds_run
    if result.sites:
        lines.append("  top allocation sites of the growth (per round):")
        for site in (result.sites if verbose else _by_line(result.sites))[:limit]:
            lines.append(
                f"    {_shown(site.filename)}:{site.lineno} in {site.function}: "
                f"+{format_size(_per_round(site.size_diff, rounds))}/round "
                f"({_per_round(site.count_diff, rounds):+,.0f} blocks/round)"
            )
            if verbose:
                lines.extend(f"        {frame}" for frame in site.traceback)
        hidden = len(result.sites) - _SHORT_LIMIT
        if not verbose and hidden > 0:
            lines.append(f"    ... {hidden} more (-v shows all, with tracebacks)")
    if result.types:
        shown = ", ".join(
            f"{g.type_name} {_per_round(g.growth, rounds):+,.0f}" for g in result.types[:limit]
        )
        lines.append(f"  growing types (per round): {shown}")
    if result.chain:
        lines.append(f"  held by: {diagnosis.format_chain(result.chain)}")
    if result.new_fds:
        targets = result.new_fds if verbose else result.new_fds[:_SHORT_LIMIT]
        more = len(result.new_fds) - len(targets)
        lines.append(
            f"  still open: {', '.join(targets)}" + (f" (+{more} more)" if more > 0 else "")
        )
        lines.extend(f"    {owner}" for owner in result.fd_owners[:limit])
    if result.unreleased:
        lines.append("  unreleased clients (created during the test, never closed):")
        for item in result.unreleased[:limit]:
            lines.append(f"    {item.count} x {item.type_name} created at {item.site}")
        hidden = len(result.unreleased) - _SHORT_LIMIT
        if not verbose and hidden > 0:
            lines.append(f"    ... {hidden} more sites (-v shows all)")
    return "\n".join(lines)


# -- the fixture's object -----------------------------------------------------------------


class LeakChecker:
    """What the ``leak_check`` fixture returns: checks callables and blocks for leaks."""

    def __init__(
        self,
        defaults: LeakCheckOptions,
        fail: Callable[[str], NoReturn],
        verbose: bool = False,
    ) -> None:
        self.defaults = defaults
        """Options before this call's keywords: plugin defaults, options, ini."""
        self._fail = fail
        self._verbose = verbose

    def __call__(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *args: Any,
        rounds: int | None = None,
        warmup: int | None = None,
        tolerance: int | str | None = None,
        track: Sequence[str | type] | None = None,
        check: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Check ``fn(*args, **kwargs)``; without ``fn``, return a context manager.

        Returns the :class:`LeakResult` of a clean check (an awaitable of it for a
        coroutine function called inside a running event loop) and fails the test with the
        result's message otherwise.
        """
        options = self.defaults.replace(
            rounds=rounds, warmup=warmup, tolerance=tolerance, track=track, check=check
        )
        if options.track:
            options = options.replace(unreleased=True)
        if fn is None:
            if args or kwargs:
                raise TypeError("leak_check() without a callable takes keyword options only")
            return LeakBlock(self._start(options, "the block"), self._judge)
        label = getattr(fn, "__qualname__", repr(fn))
        if inspect.iscoroutinefunction(fn):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                with asyncio.Runner() as runner:
                    return self._run(options, label, lambda: runner.run(fn(*args, **kwargs)))
            return self._run_async(options, label, fn, args, kwargs)
        return self._run(options, label, lambda: fn(*args, **kwargs))

    def _start(self, options: LeakCheckOptions, label: str) -> LeakCheck:
        return LeakCheck(options, label=label)

    def _judge(self, check: LeakCheck) -> LeakResult:
        if check.result.leaked:
            self._fail(check.result.message(self._verbose))
        return check.result

    def _run(self, options: LeakCheckOptions, label: str, call: Callable[[], Any]) -> LeakResult:
        check = self._start(options, label)
        with contextlib.closing(check.runs()) as runs:
            for _ in runs:
                call()
        return self._judge(check)

    async def _run_async(
        self,
        options: LeakCheckOptions,
        label: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> LeakResult:
        check = self._start(options, label)
        with contextlib.closing(check.runs()) as runs:
            for _ in runs:
                await fn(*args, **kwargs)
        return self._judge(check)


class LeakBlock:
    """``with leak_check() as rounds: for _ in rounds: ...``: the block runs each round."""

    def __init__(self, check: LeakCheck, judge: Callable[[LeakCheck], LeakResult]) -> None:
        self._check = check
        self._judge = judge
        self.result: LeakResult | None = None
        """The verdict, once the block has ended cleanly."""
        self._runs: Generator[int, None, None] | None = None

    def __enter__(self) -> Iterator[int]:
        self._runs = self._check.runs()
        return self._runs

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if self._runs is not None:
            self._runs.close()
        if exc_type is not None:
            return
        if not self._check.finished:
            raise RuntimeError(
                "leak_check(): iterate over every round, e.g. "
                "`with leak_check() as rounds: for _ in rounds: body()`"
            )
        self.result = self._judge(self._check)
