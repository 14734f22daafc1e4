"""One leak check: rerun a body, settle the heap, judge counts by CPython's ``-R`` rule.

The rule is CPython's refleak hunt: discard warm-up runs, then call it a leak only when a
figure grew in every measured round. A round in which nothing grew ends the check early:
no figure can have grown in every round any more.

The figures are counts, judged at zero: small objects (pymalloc's allocated blocks: every
Python object under 512 bytes is one), open descriptors, live threads, pending asyncio
tasks, unreleased tracked clients. A body that keeps one object, one thread or one socket
per call grows by at least one in every round, and a settled, quiet process does not
move at all (measured on 33 clean handlers: zero in every round once warm). Bytes are
judged only for what pymalloc does not count, allocations over 512 bytes (glibc's bytes
in use), above a floor that malloc's own caching never reaches.

A round runs the body several times (:func:`calls_per_round`): more calls fill bounded
caches sooner and make a leak of a few hundred bytes per call stand clear of that floor.
Before each reading the other threads of the process must be idle (a fixture's server, a
thread pool, pytest-xdist's channel): a reading taken while one of them works counts its
work in progress, so the check waits for them and retries a reading during which one ran.

Cheap always, deep on demand: every round runs untraced. Only when every round so far
grew does the last one run one call under tracemalloc, which names the growth: where it
was allocated, what it is and what holds it.
"""

from __future__ import annotations

import _tracemalloc
import contextlib
import dataclasses
import gc
import logging
import sys
import threading
import time
import tracemalloc
from array import array
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from runtime_guard import _current, _interpreter, diagnosis
from runtime_guard._leakcheck import coverage, readings, scan
from runtime_guard._leakcheck.clients import ClientWatch, Unreleased
from runtime_guard._leakcheck.message import render
from runtime_guard._leakcheck.options import LeakCheckOptions
from runtime_guard._leakcheck.settle import FixtureRecords, RecordedWarnings, settle
from runtime_guard._units import format_size
from runtime_guard.diagnosis import functions

__all__ = ["Figure", "LeakCheck", "LeakLine", "LeakResult", "calls_per_round", "grew"]

_log = logging.getLogger("runtime_guard")

# pymalloc serves requests up to 512 bytes: each allocated block is at most this big. The
# byte tolerance forgives this many bytes per block, so a tolerance never forgives fewer
# blocks than bytes, and the default (100 B) forgives none.
_SMALL_BLOCK_MAX = 512

# What glibc's count of bytes in use moves by between two settled rounds of clean code:
# its per-thread cache of freed chunks (tcache, up to 7 chunks per size under 1 KiB) is
# counted as in use. Measured on the evaluation suite's clean handlers: 0 in most rounds,
# up to 1.6 KiB, and up to 16 KiB for a client that builds an SSL context per call (httpx);
# the rule's "every round" keeps the latter from failing a test.
_BYTES_FLOOR = 4096

_TRACED_FLOOR = 4 * _BYTES_FLOOR

# Body time per round that sets the calls per round, and their most.
_ROUND_SECONDS = 0.002
_MAX_CALLS = 16

# Frames kept per traced allocation. Each costs a line-number lookup per allocation, and
# pytest's own frames are the costliest: one call of a body making 13,000 small objects
# ran traced in 122 ms with 4 frames, 207 with 8 and 586 with 16 (measured in a pytest
# session). Four climb from a stdlib helper (json.loads) to the line that called it; an
# object a library builds deeper (an ORM row: 8 frames below the user's query) is traced
# again in one more call with more frames, only when the first trace did not reach the
# user's line.
_FRAMES = 4
_DEEP_FRAMES = 16

# How long the process is watched with the body idle, when other threads may be growing
# the figures on their own (see LeakCheck._own_growth).
_PAUSE_MIN = 0.005
_PAUSE_MAX = 0.02

# How long a reading waits for the other threads to be idle, and how often it retries a
# reading during which one of them ran.
_IDLE_TIMEOUT = 0.02
_STARVED_TIMEOUT = 0.2
_IDLE_POLL = 0.0005
_READ_ATTEMPTS = 3

# Calls of the traced round at most.
_TRACED_CALLS = 4

# Rounds run again at most, when a count of the body's fell in them (LeakCheck._fell).
_REPEATS = 2

# At most this long is waited for the other threads before tracemalloc is stopped.
_STOP_WAIT = 0.5

_MALLOC = readings.malloc_reader()
_IMMORTAL_STRINGS = _interpreter.immortal_strings

_DEFAULT: Any = object()

# Figures whose growth names its own line: the client, thread, task or file made per call.
_NAMED_BY_FIGURE = frozenset({"clients", "threads", "tasks", "fds"})

# Reading slots: one row of these per reading, in a preallocated array.
_NAMES = ("objects", "heap", "fds", "threads", "tasks", "clients")
_OBJECTS, _HEAP, _CLIENTS = 0, 1, 5
# Figures that other threads' own work moves; the others count things the body made.
_AMOUNTS = (_OBJECTS, _HEAP)
# A slot per reading holds tracemalloc's traced bytes, read while it traces; the last, the
# interpreter's count of interned strings it will never free (3.12 on).
_TRACED = len(_NAMES)
_IMMORTAL = _TRACED + 1
_SLOTS = _IMMORTAL + 1

# The count of small objects: pymalloc's blocks, where the interpreter counts them.
_BLOCKS: Callable[[], int] | None = (
    sys.getallocatedblocks if _interpreter.HEAP_BLOCKS_UNREAD is None else None
)

# A round of the heap figure counts as growing only if it grew per call by at least this
# share of the median round: a buffer kept per call grows the same in every round, where
# malloc's caching moves by amounts that differ from round to round (measured: an HTTPS
# client made per call moved it by 33, 6, 5 and 61 KiB in four rounds of one call).
_STEADY = 4


def calls_per_round(seconds: float | None) -> int:
    """Calls of the body per round, from a warm call's cost in seconds (None: not timed).

    As many as fit in 2 ms, a power of two, 1 to 16: a body of 100 us runs 16 times per
    round, one of 1 ms twice, a slower one once.
    """
    if seconds is None:
        return 1
    calls = 1
    while calls < _MAX_CALLS and (calls * 2) * seconds <= _ROUND_SECONDS:
        calls *= 2
    return calls


def _call_cost(wall: float, cpu: float) -> float:
    """What one call costs, for :func:`calls_per_round`: its CPU time, or a quarter of its
    wall time when it mostly waits (on a server, a disk).

    Wall time alone would count the time the process waited for a core: on a busy
    machine a body of 10 us took 500 us now and then, and ran half the calls per round,
    which changes which bounded caches have filled before the last round.
    """
    return max(cpu, wall / 4)


@dataclass
class Figure:
    """One judged figure across the measured rounds."""

    name: str
    """``heap``, ``objects``, ``fds``, ``threads``, ``tasks`` or ``clients``."""
    background: bool = False
    """True when the process's other threads grew it as much on their own: not judged."""
    thresholds: list[int] = field(default_factory=list)
    """Per round, the growth above which the round counts as growing."""
    deltas: list[int] = field(default_factory=list)
    """Growth in each measured round."""
    calls: list[int] = field(default_factory=list)
    """Calls of the body in each measured round."""

    @property
    def grew_every_round(self) -> bool:
        """True when every measured round grew beyond its threshold (and, for the heap, by
        a similar amount per call in each)."""
        return not self.background and grew(self.name, self.deltas, self.thresholds, self.calls)

    @property
    def per_call(self) -> float:
        """Mean growth per call over the measured rounds."""
        calls = sum(self.calls)
        return sum(self.deltas) / calls if calls else 0.0


def grew(name: str, deltas: list[int], limits: list[int], calls: list[int]) -> bool:
    """CPython's rule: every round grew beyond its limit; for the heap, steadily.

    The heap is judged on the rounds of the most calls alone (the traced round is one
    call): a list or a buffer grows in place into room it reserved before, so one call
    may grow nothing where many grow steadily.
    """
    if name == "heap" and calls and min(calls) < max(calls):
        most = max(calls)
        kept = [at for at, count in enumerate(calls) if count == most]
        deltas = [deltas[at] for at in kept]
        limits = [limits[at] for at in kept]
        calls = [most] * len(kept)
    if not deltas or any(delta <= limit for delta, limit in zip(deltas, limits, strict=True)):
        return False
    if name != "heap" or len(deltas) < 3:
        return True
    per_call = sorted(delta / count for delta, count in zip(deltas, calls, strict=True))
    return per_call[0] * _STEADY >= per_call[len(per_call) // 2]


@dataclass
class LeakLine:
    """The user's line that allocated what leaked, and how much of it stayed per call."""

    filename: str
    lineno: int
    function: str
    size: int
    """Bytes allocated there and kept, per call (the traced call)."""
    count: int
    """Objects allocated there and kept, per call."""
    type_name: str
    """The type of the kept object that stands for the rest (what the line made)."""
    what: str = ""
    """What the line leaks per call, in words."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LeakResult:
    """What a check measured and concluded; :meth:`message` is the failure text."""

    label: str
    """What was checked (the test id or the callable's name)."""
    options: LeakCheckOptions
    """The options the check ran with."""
    rounds_run: int = 0
    """Measured rounds actually run (fewer than asked when a round grew nothing)."""
    traced_rounds: int = 0
    """Measured rounds run under tracemalloc: the ones the diagnosis is read from."""
    calls_per_round: int = 1
    """Calls of the body in each untraced measured round."""
    traced_calls: int = 0
    """Calls of the body in the traced round: what the diagnosis was read from."""
    traced_blocks: bool = False
    """True when small objects were counted from tracemalloc's traces, every round traced:
    where the interpreter does not count pymalloc's blocks."""
    figures: dict[str, Figure] = field(default_factory=dict)
    """Figures by name."""
    blocks: list[int] = field(default_factory=list)
    """``sys.getallocatedblocks()`` at the baseline and after each round."""
    noisy_rounds: int = 0
    """Rounds whose reading could not wait for the other threads to be idle."""
    background: list[str] = field(default_factory=list)
    """Figures the other threads grew as much on their own, left unjudged."""
    line: LeakLine | None = None
    """The leaking line: where what the traced call kept was allocated, in the user's code."""
    sites: list[diagnosis.AllocationSite] = field(default_factory=list)
    """Allocation sites of the traced call's growth, by the user's line, biggest first."""
    types: list[diagnosis.TypeGrowth] = field(default_factory=list)
    """Objects allocated by the traced call and still alive, by type (``after``)."""
    chain: list[str] | None = None
    """Holder chain from a module-level name, a fixture or a local down to the growth."""
    exceptions: list[str] = field(default_factory=list)
    """Kept exceptions: their type, where raised and the frames their tracebacks keep."""
    threads: list[str] = field(default_factory=list)
    """Threads started during the check and still running: where started, where now."""
    tasks: list[str] = field(default_factory=list)
    """asyncio tasks created during the check and still pending: where made, where now."""
    new_fds: list[str] = field(default_factory=list)
    """What descriptors opened during the rounds and still open point at."""
    fd_owners: list[str] = field(default_factory=list)
    """Open file or socket objects holding those descriptors, with their allocation site."""
    unreleased: list[Unreleased] = field(default_factory=list)
    """Tracked clients still unreleased at the end."""
    notes: list[str] = field(default_factory=list)
    """What this interpreter changes about the figures or the verdict, in words."""

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
        return render(self, verbose)

    def __str__(self) -> str:
        return self.message() if self.leaked else f"no leak in {self.label}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "label": self.label,
            "leaked": self.leaked,
            "rounds_run": self.rounds_run,
            "traced_rounds": self.traced_rounds,
            "calls_per_round": self.calls_per_round,
            "traced_calls": self.traced_calls,
            "traced_blocks": self.traced_blocks,
            "warmup": self.options.warmup,
            "tolerance": self.options.tolerance,
            "figures": {
                name: {
                    "deltas": list(f.deltas),
                    "thresholds": list(f.thresholds),
                    "calls": list(f.calls),
                    "grew": f.grew_every_round,
                    "background": f.background,
                }
                for name, f in self.figures.items()
            },
            "blocks": list(self.blocks),
            "noisy_rounds": self.noisy_rounds,
            "background": list(self.background),
            "line": None if self.line is None else self.line.to_dict(),
            "sites": [site.to_dict() for site in self.sites],
            "types": [growth.to_dict() for growth in self.types],
            "chain": None if self.chain is None else list(self.chain),
            "exceptions": list(self.exceptions),
            "threads": list(self.threads),
            "tasks": list(self.tasks),
            "new_fds": list(self.new_fds),
            "fd_owners": list(self.fd_owners),
            "unreleased": [dataclasses.asdict(item) for item in self.unreleased],
            "notes": list(self.notes),
        }


class LeakCheck:
    """Runs a body ``warmup`` times, then in rounds, and judges the figures between rounds.

    Iterate it and run the body once per iteration; measurement happens between
    iterations. After the loop :attr:`result` holds the verdict and, for a leak, the
    diagnosis: what survived the traced call, where it was allocated and what holds it.

    ``malloc`` reads the C allocator's bytes in use (the default reads glibc's
    ``mallinfo2``); where there is none (None), bytes are read from tracemalloc, which
    then runs in every round. ``blocks`` counts the small objects (the default reads
    pymalloc's blocks where the interpreter counts them); where there is none (None), the
    live allocations tracemalloc traced are counted instead, and it runs in every round.
    """

    def __init__(
        self,
        options: LeakCheckOptions,
        label: str = "test body",
        malloc: readings.MallocReader | None = _DEFAULT,
        blocks: Callable[[], int] | None = _DEFAULT,
    ) -> None:
        self.options = options
        self.result = LeakResult(label, options)
        self._malloc = _MALLOC if malloc is _DEFAULT else malloc
        self._blocks = _BLOCKS if blocks is _DEFAULT else blocks
        if self._blocks is None and "objects" in options.check:
            self.result.traced_blocks = True
            self.result.notes.append(
                "small objects counted from tracemalloc's traces, every round traced: "
                + (_interpreter.HEAP_BLOCKS_UNREAD or "no count of pymalloc's blocks")
            )
        self._clients: ClientWatch | None = None
        self._session = diagnosis.TracemallocSession(frames=_FRAMES)
        self._fds: frozenset[int] = frozenset()
        self._frozen = False
        self._idle_timeout = _IDLE_TIMEOUT
        self._owned = False
        self._threads: frozenset[int] = frozenset()
        self._modules: list[tuple[str, dict[str, Any]]] = []
        self._tasks: frozenset[int] = frozenset()
        # Readings go into a preallocated array: a reading kept as Python ints or in a
        # growing list would itself be a block or two per round, growth of the check's
        # own making in a check that judges blocks at zero.
        # Rows: the baseline, each round's end (rounds run again too), the traced round's
        # own start, two scratch.
        rounds = options.rounds + 2 + _REPEATS
        self._rows = array("q", bytes(8 * _SLOTS * (rounds + 4)))
        self._row = 0
        self._starts = array("q", bytes(8 * rounds))
        self._ends = array("q", bytes(8 * rounds))
        self._calls = array("q", bytes(8 * rounds))
        self._times = array("d", bytes(8 * (rounds + 4)))
        self._cpu = array("d", [0.0])
        self._background: set[int] = set()
        self._clocks: tuple[int, ...] = ()
        self._elders: list[tuple[int, int | None]] = []
        self._traced = array("b", bytes(rounds))
        # The traced round bounded by what it kept (:meth:`_count_in_flight`), and the
        # small blocks and bytes it kept; the round is -1 when none is.
        self._flight = array("q", [-1, 0, 0])
        self._flight_calls: scan.InFlight = frozenset()
        self._calls_traced = 0
        self.roots: list[tuple[str, object]] = []
        """Namespaces the body reaches besides module globals, e.g. ``("fixture", kwargs)``:
        where the diagnosis looks for the holder of a leak."""
        self.finished = False
        """True once every round has run."""

    def __iter__(self) -> Iterator[int]:
        return self.runs()

    def runs(self) -> Generator[int, None, None]:
        """The runs, one per iteration; close it to stop early (tracemalloc stops too)."""
        options = self.options
        warnings = RecordedWarnings()
        seconds: float | None = None
        records = FixtureRecords([namespace for _, namespace in self.roots])
        for index in range(options.warmup):
            started, on_cpu = time.perf_counter(), time.thread_time()
            yield index
            cost = _call_cost(time.perf_counter() - started, time.thread_time() - on_cpu)
            records.settle()
            # The first call fills caches and lazy singletons: the later ones tell.
            seconds = cost if seconds is None or index == 1 else min(seconds, cost)
        self._clients = ClientWatch.start(options.track)
        if options.single:
            try:
                yield from self._once()
            finally:
                self._clients.close()
            return
        calls = self.result.calls_per_round = calls_per_round(seconds)
        resume = _pause_guard_sampler()
        restore_coverage = coverage.set_aside()
        # Everything alive now is the baseline: frozen, it is left out of every collection
        # until the rounds end, so settling costs what the rounds allocated, not what the
        # whole process holds (a full collection of a pytest heap: 30 ms; of the young
        # objects: under 1 ms). A host that froze objects itself keeps its freeze; objects
        # the interpreter froze at start-up (3.12 does) are no host's.
        frozen = self._frozen = gc.get_freeze_count() <= _interpreter.FROZEN_AT_START
        if frozen:
            gc.freeze()
        try:
            yield from self._rounds(calls, warnings, records)
        finally:
            if self._frozen:
                gc.unfreeze()
            self._stop_tracing()
            self._clients.close()
            resume()
            restore_coverage()

    def _rounds(
        self, calls: int, warnings: RecordedWarnings, records: FixtureRecords
    ) -> Iterator[int]:
        options = self.options
        result = self.result
        assert self._clients is not None
        settle()
        self._clients.mark()
        slots = [
            slot for slot, name in enumerate(_NAMES) if name in options.check or name == "clients"
        ]
        # Numbers only: reading every descriptor's target took 1 ms a check; the new ones'
        # are read at the end, when they are named.
        self._fds = frozenset(readings.fd_numbers()) if "fds" in options.check else frozenset()
        self._threads = frozenset(threading._active)  # type: ignore[attr-defined]
        self._tasks = frozenset(map(id, readings.pending_tasks()))
        # Bytes cannot be read untraced without malloc's figures, nor small objects without
        # pymalloc's; a host that traces already keeps tracing and its traces name the growth.
        if (
            tracemalloc.is_tracing()
            or ("heap" in options.check and self._malloc is None)
            or ("objects" in options.check and self._blocks is None)
        ):
            self._trace()
        run = options.warmup
        planned, repeats, index = options.rounds, _REPEATS, 0
        self._elders = readings.other_threads()
        self._clocks = readings.cpu_clocks(self._elders)
        self._read()
        slowing = True
        while index < planned:
            if index == planned - 1 and slowing and self._slowing(slots, index):
                # Growth halved from one round to the next: a bounded cache filling up
                # slows down so, a leak does not. One more round, untraced, tells.
                slowing = False
                planned += 1
            if index == planned - 1 and not self._session.active:
                if index and not self._own_growth(slots, index):
                    break  # what grew, other threads grew on their own
                # The last round runs under tracemalloc, which names the growth: a few calls
                # (one for a slow body), so that a block kept per call stands clear of what
                # another thread may have left in flight. A client left open per call is
                # named by its creation site, which tracking records: one frame per
                # allocation then tells young from old, cheaper.
                if self._grew_every_round([_CLIENTS], index):
                    self._session = diagnosis.TracemallocSession(frames=1)
                self._modules = scan.user_modules()
                self._trace()
                # Read afresh: starting tracemalloc is no growth of the body's.
                self._read()
                calls = result.traced_calls = min(calls, _TRACED_CALLS)
            self._starts[index] = self._row - 1
            # Stored in an array: a float kept in a local would be alive at the reading.
            self._cpu[0] = time.thread_time()
            for _ in range(calls):
                yield run
                run += 1
                records.settle()
            if self._session.active and not result.traced_calls:
                self._calls_traced += calls
            warnings.drop_repeats()
            self._calls[index] = calls
            if index == 0 and not self._session.active:
                # One warm call's cost can be a collection's or a busy machine's: the first
                # round's calls, timed together, may let the next rounds run more, and one
                # round more, so that bounded caches get as many calls to fill as planned.
                more = calls_per_round((time.thread_time() - self._cpu[0]) / calls)
                if more > calls:
                    calls = result.calls_per_round = more
                    planned += 1
            self._traced[index] = self._session.active
            noisy = self._read()
            self._ends[index] = self._row - 1
            if repeats and (noisy or self._fell(slots, index)):
                # Read while another thread kept working, or a count of the body's fell
                # (something else freed: another test's garbage, another thread's): this
                # round tells nothing sure of the body. It runs again.
                repeats -= 1
                continue
            if self._session.active and index == planned - 1:
                # Only once the round stands: reading the other threads' stacks makes their
                # frame objects, growth a round run again would count.
                self._count_in_flight(index)
            index = result.rounds_run = index + 1
            if not self._grew_every_round(slots, index):
                break
        # Frozen since tracing began, the heap lists the traced calls' objects alone: read
        # before anything else of the check's is made.
        young = gc.get_objects() if self._frozen and self._session.active else []
        grown = [
            _NAMES[slot] for slot in slots if self._grew_every_round([slot], result.rounds_run)
        ]
        if not result.traced_calls:
            # Traced from the start: what the calls kept is read over all of them.
            result.traced_calls = self._calls_traced
        if grown:
            opened = self._opened()
            with _collections_paused():
                findings = self._survey(young, opened)
            # A client, thread, task or descriptor left per call names its own line.
            named = bool(_NAMED_BY_FIGURE.intersection(grown))
            if findings is not None and findings.shallow and not named and self._deeper():
                # The kept objects were made deeper in a library than the frames traced
                # reach: one more call, traced deep enough to reach the user's line.
                yield run
                settle()
                young = gc.get_objects()
                with _collections_paused():
                    findings = self._survey(young, opened) or findings
            with _collections_paused():
                self._name(findings, opened, grown)
        young = []
        self._figures(slots)
        self._note_immortal_strings(grown)
        result.unreleased = self._clients.unreleased()
        self.finished = True

    def _note_immortal_strings(self, grown: list[str]) -> None:
        """Say so when what the calls kept includes strings the interpreter will never free:
        interned per call on 3.12, where every interned string is immortal."""
        result = self.result
        if "objects" not in grown or _IMMORTAL_STRINGS is None or not result.rounds_run:
            return
        rounds = range(result.rounds_run)
        deltas = [self._delta(_IMMORTAL, index) for index in rounds]
        if min(deltas) <= 0:
            return
        per_call = sum(deltas) / sum(self._calls[index] for index in rounds)
        cause = (
            "Python 3.12 never frees an interned string (every one is immortal there): a new "
            "string interned per call (sys.intern(), an attribute name set with setattr()) "
            "stays for the life of the process, where 3.11 and 3.13 free it with its last "
            "reference"
            if _interpreter.INTERNED_IMMORTAL
            else "the interpreter never frees these (names in code compiled per call, for one)"
        )
        result.notes.append(f"strings interned for good {per_call:+,.3g}/call: {cause}")
        line = result.line
        if line is not None and not line.what:
            line.what = "a string interned per call and never freed"

    def _count_in_flight(self, index: int) -> None:
        """Bound the growth of traced round ``index`` by what it traced and kept, apart from
        the calls other threads are still in.

        A thread waiting in a loop (a watcher's ``queue.get(timeout=...)``) frees the
        objects of its last wait and makes the next one's (a waiter lock, the deadline's
        floats): the number alive at a reading moves with where each thread is, so that a
        busy machine, where the readings catch threads mid-way, counts them as growth. A
        round traced from its start cannot have grown by more blocks than its traces kept,
        and what the running calls of other threads made is theirs. Read right after the
        round's reading, before the threads move on.
        """
        if not self._elders or readings.cpu_clocks(self._elders) == self._clocks:
            return  # no thread that was there before the body ran since the baseline
        self._flight_calls = scan.in_flight_calls(tracemalloc.get_traceback_limit())
        blocks, size = scan.kept_apart_from(self._flight_calls)
        self._flight[0], self._flight[1], self._flight[2] = index, blocks, size

    def _own_growth(self, slots: list[int], rounds: int) -> bool:
        """False when the other threads, left alone, grow every figure that grew.

        A thread at work on its own (an exporter flushing every few ms, a poller) adds to
        the process's figures with time, not with calls. Each figure's growth over the
        rounds is set against what the process grows while the body does not run, over a
        pause three rounds long: a figure the pause grows by half as much per round as
        the least the rounds grew is the other threads' (measured: a thread flushing
        every 5 ms grew blocks by 2 a round, as much as a 5 ms body that keeps nothing).
        Growth that other threads make for the body (a server answering it) happens only
        while the body runs, and stays the body's.
        """
        # Threads the body started are its own; those running before it may work alone.
        if readings.cpu_clocks(self._elders) == self._clocks:
            return True  # none of them ran since the baseline: all growth is the body's
        if any(self._grew_every_round([slot], rounds) for slot in slots if slot not in _AMOUNTS):
            return True  # a client, thread, task or file per call is a leak either way
        rows, times = self._rows, self._times
        mean = (times[self._ends[rounds - 1]] - times[0]) / rounds
        pause = min(max(3 * mean, _PAUSE_MIN), _PAUSE_MAX)
        # Both readings of the pause are taken from here, with the same locals alive.
        first = self._row
        noisy = self._read(scratch=True)
        self._row += 1
        time.sleep(pause)
        noisy = self._read(scratch=True) or noisy
        self._row -= 1
        if noisy:
            return True  # what the others did meanwhile is not known: the body's it is
        before, after = first * _SLOTS, (first + 1) * _SLOTS
        for slot in slots:
            if slot in self._background or not self._grew_every_round([slot], rounds):
                continue
            alone = (rows[after + slot] - rows[before + slot]) * mean / pause
            least = min(self._delta(slot, index) for index in range(rounds))
            if alone * 2 >= least:
                self._background.add(slot)
        self.result.background = [_NAMES[slot] for slot in sorted(self._background)]
        return self._grew_every_round(slots, rounds)

    def _once(self) -> Iterator[int]:
        assert self._clients is not None
        self._clients.mark()
        yield 0
        gc.collect()
        self.result.unreleased = self._clients.unreleased()
        self.finished = True

    def _trace(self) -> None:
        """Start tracing for the rounds to come."""
        if self._frozen:
            # Frozen again, the young objects at the end are the traced calls' alone: the
            # only ones with a traceback to read.
            gc.freeze()
        self._session.start()
        self._owned = self._session.owned

    def _read(self, scratch: bool = False) -> bool:
        """Settle, wait for the other threads, read the figures into the next row; True
        when another thread kept working through the reading.

        ``scratch`` reads into the next row without keeping it: the next reading will
        overwrite it.
        """
        settle()
        noisy = True
        for _ in range(_READ_ATTEMPTS):
            before = _idle_threads(self._idle_timeout)
            # The collection empties the free lists that the other threads refilled while
            # they were waited for; nothing else runs until the figures are read.
            gc.collect()
            self._store()
            after = abs(hash(readings.cpu_clocks(readings.other_threads())))
            if before is None or before == after:
                noisy = False
                break
            if before < 0:
                break  # a thread that never rests: waiting longer only lets it do more
        self._times[self._row] = time.perf_counter()
        if scratch:
            return noisy
        self._row += 1
        if noisy:
            # Later readings wait less: a thread at work all the time changes more, the
            # longer the wait.
            self._idle_timeout = _IDLE_POLL
            self.result.noisy_rounds += 1
        return noisy

    def _store(self) -> None:
        rows = self._rows
        at = self._row * _SLOTS
        tracing = tracemalloc.is_tracing()
        if self._blocks is not None:
            rows[at] = self._blocks()
        else:
            # Allocations traced and still alive; the list is made after they are counted.
            rows[at] = len(_tracemalloc._get_traces()) if tracing else 0
        malloc = self._malloc() if self._malloc is not None else None
        if malloc is None:
            rows[at + 1] = tracemalloc.get_traced_memory()[0] if tracing else 0
        else:
            # tracemalloc's own tables are malloc'd too; they grow with every trace.
            rows[at + 1] = malloc - (tracemalloc.get_tracemalloc_memory() if tracing else 0)
        rows[at + 2] = readings.fd_count()
        rows[at + 3] = readings.thread_count()
        rows[at + 4] = len(readings.pending_tasks())
        rows[at + 5] = self._clients.count() if self._clients is not None else 0
        rows[at + _TRACED] = tracemalloc.get_traced_memory()[0] if tracing else 0
        rows[at + _IMMORTAL] = _IMMORTAL_STRINGS() if _IMMORTAL_STRINGS is not None else 0

    def _slowing(self, slots: list[int], rounds: int) -> bool:
        """True when a count that grew in each of ``rounds`` rounds grew in the last by less
        than half as much per call as in the one before."""
        if rounds < 2:
            return False
        last, before = rounds - 1, rounds - 2
        return any(
            slot != _HEAP
            and self._grew_every_round([slot], rounds)
            and 2 * self._delta(slot, last) * self._calls[before]
            < self._delta(slot, before) * self._calls[last]
            for slot in slots
        )

    def _fell(self, slots: list[int], index: int) -> bool:
        """True when a count that grew in every round before ``index`` fell in it by more
        than any of those rounds grew (by more than one per call in the first round).

        Only a fall too large for noise counts: re-running every round that fell would
        favour the rounds that grew, and turn noise into a leak.
        """
        for slot in slots:
            if slot == _HEAP:
                continue
            delta = self._delta(slot, index)
            if index == 0:
                if delta < -self._calls[0]:
                    return True
            elif self._grew_every_round([slot], index) and -delta > max(
                self._delta(slot, earlier) for earlier in range(index)
            ):
                return True
        return False

    def _limit(self, slot: int, calls: int, traced: bool) -> int:
        """The growth of figure ``slot`` over a round of ``calls`` calls that is forgiven."""
        tolerance = self.options.tolerance
        if slot == _HEAP:
            if self._malloc is None:  # traced bytes alone: exact
                return tolerance * calls
            # While tracing, malloc also hands tracemalloc memory that its own count
            # leaves out (measured: 5 KiB for a call that replaced a 100 KB buffer).
            floor = _TRACED_FLOOR if traced else _BYTES_FLOOR
            return max(tolerance * calls, floor)
        if slot == _OBJECTS:
            return tolerance // _SMALL_BLOCK_MAX * calls
        return 0

    def _delta(self, slot: int, index: int) -> int:
        """Growth of figure ``slot`` over round ``index``."""
        rows = self._rows
        now, before = self._ends[index] * _SLOTS, self._starts[index] * _SLOTS
        delta = rows[now + slot] - rows[before + slot]
        if slot == _HEAP and self._traced[index] and self._malloc is not None:
            # Traced, the heap's growth is known exactly, small objects included; malloc's
            # figure then also moves with tracemalloc's own tables.
            delta = min(delta, rows[now + _TRACED] - rows[before + _TRACED])
        flight = self._flight
        if flight[0] == index and slot in _AMOUNTS:
            delta = min(delta, flight[1] if slot == _OBJECTS else flight[2])
        return delta

    def _grew_every_round(self, slots: list[int], rounds: int) -> bool:
        """True when some judged figure grew in each of ``rounds`` rounds (:func:`grew`).

        Read from the arrays: a figure kept as Python objects between the rounds would be
        growth of the check's own making.
        """
        for slot in slots:
            if slot in self._background:
                continue
            calls = [self._calls[index] for index in range(rounds)]
            deltas = [self._delta(slot, index) for index in range(rounds)]
            limits = [
                self._limit(slot, calls[index], bool(self._traced[index]))
                for index in range(rounds)
            ]
            if grew(_NAMES[slot], deltas, limits, calls):
                return True
        return False

    def _background_of(self, slot: int) -> bool:
        return slot in self._background

    def _figures(self, slots: list[int]) -> None:
        """The judged figures of the rounds run, read from the arrays once they are over."""
        rows = self._rows
        result = self.result
        ends = [self._ends[index] for index in range(result.rounds_run)]
        result.blocks = [rows[row * _SLOTS] for row in (0, *ends)]
        for slot in slots:
            figure = result.figures[_NAMES[slot]] = Figure(_NAMES[slot], self._background_of(slot))
            for index in range(result.rounds_run):
                calls = self._calls[index]
                figure.deltas.append(self._delta(slot, index))
                figure.thresholds.append(self._limit(slot, calls, bool(self._traced[index])))
                figure.calls.append(calls)
        result.traced_rounds = sum(self._traced[: result.rounds_run])

    def _opened(self) -> dict[int, str]:
        """Descriptors opened since the baseline and still open, with their targets."""
        return readings.fd_targets(set(readings.fd_numbers()) - self._fds)

    def _survey(self, young: list[object], opened: dict[int, str]) -> scan.Findings | None:
        """What the traced calls left (``young``): gathered while tracing, then tracing is
        stopped and the findings worked out (None when the host stopped tracemalloc)."""
        findings: scan.Findings | None = None
        if tracemalloc.is_tracing():
            roots = [*self.roots, *scan.stack_roots()]
            modules = self._modules or scan.user_modules()
            site = self._clients.first_site()[0] if self._clients is not None else None
            # Where the other threads are now, too: one caught between two waits at the
            # round's reading is in its next wait by now.
            flight = self._flight_calls
            if flight:
                flight |= scan.in_flight_calls(tracemalloc.get_traceback_limit())
            findings = scan.survey(young, roots, modules, [site[0]] if site else [], flight)
            # Neither list may show up as a referrer in the chain found later.
            young.clear()
            roots.clear()
        self._stop_tracing()
        if findings is not None:
            findings.finish(set(opened))
        return findings

    def _stop_tracing(self) -> None:
        """Stop tracemalloc (when this check started it) once the other threads rest.

        On CPython 3.11, 3.12 before 3.12.9 and 3.13 before 3.13.2, ``tracemalloc.stop()``
        can crash the process while another thread records an allocation it made without
        the GIL (gh-128679): a thread starting or ending, a server's connection thread.
        The other threads are waited for as for a reading, and until none starts or ends.
        """
        if not self._session.active:
            return
        if diagnosis.STOP_MAY_CRASH and self._session.owned:
            deadline = time.monotonic() + _STOP_WAIT
            before = diagnosis.thread_idents()
            while time.monotonic() < deadline:
                _idle_threads(_IDLE_TIMEOUT)
                now = diagnosis.thread_idents()
                if now == before:
                    break
                before = now
        self._session.stop()

    def _deeper(self) -> bool:
        """Trace the next call with more frames; False where the host's tracing is used."""
        if not self._owned or not self._frozen:
            return False
        self._session = diagnosis.TracemallocSession(frames=_DEEP_FRAMES)
        self._trace()
        return True

    def _name(
        self, findings: scan.Findings | None, opened: dict[int, str], grown: list[str]
    ) -> None:
        """Name the growth of the ``grown`` figures: line, sites, types, holder, threads,
        tasks, descriptors."""
        result = self.result
        if self._frozen:
            gc.unfreeze()  # the referrer chain needs the whole heap
            self._frozen = False
        if findings is not None:
            result.sites = findings.sites
            result.types = [
                diagnosis.TypeGrowth(name, 0, count)
                for name, count in findings.types.most_common(10)
            ]
            result.exceptions = findings.exceptions
            # The backward search scans the heap per level: only when nothing else names
            # what leaked.
            named = bool(_NAMED_BY_FIGURE.intersection(grown))
            result.chain = findings.chain or (None if named else scan.backward_chain(findings.held))
            findings.held.clear()
            if "fds" in grown:
                result.fd_owners = findings.fd_owners
        if "fds" in grown:
            result.new_fds = sorted(set(opened.values()))
        threads = scan.new_threads(self._threads, findings) if "threads" in grown else []
        tasks = scan.new_tasks(self._tasks, findings) if "tasks" in grown else []
        result.threads = [text for text, _ in threads]
        result.tasks = [text for text, _ in tasks]
        # What grew decides the line named: the client, thread or task made per call is
        # the leak; the objects they hold are its consequence.
        candidates: list[tuple[scan.Line | None, str]] = []
        if "clients" in grown and self._clients is not None:
            site, kind = self._clients.first_site()
            candidates.append((site, f"a {kind} made per call and never closed"))
        candidates += [(line, "a thread started per call and still running") for _, line in threads]
        candidates += [
            (line, "an asyncio task created per call and still pending") for _, line in tasks
        ]
        if findings is not None:
            if "fds" in grown:
                candidates.append(
                    (findings.fd_line, "a file descriptor opened per call and left open")
                )
            candidates.append((findings.line, ""))
        line, what = next(((at, what) for at, what in candidates if at is not None), (None, ""))
        if line is not None:
            size, count, kept = findings.lines.get(line, (0, 0, "")) if findings else (0, 0, "")
            # The traced round may run a few calls: what the line keeps, per call.
            size, count = size // max(result.traced_calls, 1), count // max(result.traced_calls, 1)
            if not what and count:
                what = f"{kept}, {format_size(size)} in {count:,} objects kept per call"
            filename, lineno = line
            result.line = LeakLine(
                filename, lineno, functions.function_at(filename, lineno), size, count, kept, what
            )


@contextlib.contextmanager
def _collections_paused() -> Iterator[None]:
    """No automatic collection while the diagnosis reads what the calls kept.

    It allocates as it goes (lists of the young objects, tracebacks, paths) and any
    allocation may start a collection, which finds nothing to free there: measured on the
    evaluation suite's failing tests, 30-40 % of a survey's time. What it leaves is
    collected by the next reading's settling.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _idle_threads(timeout: float) -> int | None:
    """Wait until the other Python threads are idle; a hash of their CPU clocks then (None:
    no others; -1: one still busy when ``timeout`` seconds were up). A hash, as a tuple
    alive during the reading would be counted in it.

    Idle: none ran over a pause in which this thread let go of the GIL (a thread waiting
    for the GIL takes it then and runs), and none that ran while waited for is runnable
    still. A thread still busy when ``timeout`` seconds are up is read as it is.
    """
    threads = readings.other_threads()
    if not threads:
        return None
    clocks = readings.cpu_clocks(threads)
    moved: set[int] = set()
    started = time.monotonic()
    while True:
        time.sleep(_IDLE_POLL)
        now = readings.cpu_clocks(threads)
        waited = time.monotonic() - started
        if now == clocks:
            # Only threads seen running are asked about their state: reading /proc costs
            # 40 us a thread, and one asleep throughout has nothing in flight.
            suspects = [thread for at, thread in enumerate(threads) if at in moved]
            if not suspects or not readings.runnable(suspects):
                return abs(hash(now))
            # Runnable, yet it did not run: the machine's cores are busy elsewhere. It
            # will run, and is waited for longer than a thread that keeps running.
            if waited >= _STARVED_TIMEOUT:
                return -1
        elif waited >= timeout:
            return -1
        moved.update(
            at for at, (old, new) in enumerate(zip(clocks, now, strict=True)) if old != new
        )
        clocks = now


def _pause_guard_sampler() -> Callable[[], None]:
    """Keep an installed guard's sampler from sampling until the returned call.

    The sampler records a sample into its history every interval: growth the check would
    otherwise count against the body. Calls of ``sample()`` from any other thread, the
    body's own included, are served as usual.
    """
    guard = _current.guard
    sampler = getattr(guard, "_thread", None)
    if guard is None or sampler is None or "sample" in vars(guard):
        return _nothing
    ident = sampler.ident
    sample = guard.sample

    def paused() -> Any:
        if threading.get_ident() == ident:
            return None
        return sample()

    vars(guard)["sample"] = paused

    def resume() -> None:
        if vars(guard).get("sample") is paused:
            del vars(guard)["sample"]

    return resume


def _nothing() -> None:
    pass
