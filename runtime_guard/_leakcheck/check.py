"""One leak check: rerun a body, settle the heap, judge figures by CPython's ``-R`` rule.

The rule is CPython's refleak hunt: discard warm-up runs, then call it a leak only when a
figure grew in every measured round, beyond the tolerance. A round in which nothing grew
ends the check early: no figure can have grown in every round any more.

Cheap always, deep on demand: the measured rounds run untraced and are judged on figures
that cost microseconds (live objects, allocated blocks, the C allocator's bytes in use,
descriptors, tracked clients). Only when every round so far grew does the last round run
under tracemalloc, which judges the heap exactly and names where the growth was allocated.
A clean body never pays for tracemalloc; a leaky one pays for one traced round instead of
all of them (tracemalloc made a body 3-12x slower here, with eight frames per trace).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import time
import tracemalloc
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from runtime_guard import diagnosis
from runtime_guard._leakcheck import readings, scan
from runtime_guard._leakcheck.clients import ClientWatch, Unreleased
from runtime_guard._leakcheck.message import render
from runtime_guard._leakcheck.options import LeakCheckOptions
from runtime_guard._leakcheck.settle import settle

__all__ = ["Figure", "LeakCheck", "LeakResult"]

_log = logging.getLogger("runtime_guard")

# The bytes tolerance counted in objects: 64 bytes is about the smallest GC-tracked object
# with its GC header, so a tolerance never forgives fewer objects than it forgives bytes.
_BYTES_PER_OBJECT = 64

# pymalloc serves requests up to 512 bytes from its own pools: an allocated block there is at
# most this big. Larger requests go to malloc, whose bytes in use are read as they are.
_SMALL_BLOCK_MAX = 512

# How far the untraced bound can read low: free lists keep or hand back a few blocks
# between rounds without an allocation (seen: a block kept per round read as +2, +1, 0 in
# a full test run). It is added to the bound, and a tolerance under twice it is judged
# from traces in every round instead.
_UNTRACED_NOISE = 4 * _SMALL_BLOCK_MAX

# Frames kept per traced allocation. Enough to climb from a stdlib helper (json.loads,
# logging) to the line that called it; more reach into pytest's own frames, whose line
# numbers cost the most to read: a redis client made per call ran traced in 16 ms with one
# frame, 31 ms with three, 33 ms with four and 45 ms with eight (measured in a pytest run).
_FRAMES = 4

_MALLOC = readings.malloc_reader()

_DEFAULT: Any = object()


@dataclass
class Figure:
    """One judged figure across the measured rounds."""

    name: str
    """``heap``, ``objects``, ``fds`` or ``clients``."""
    threshold: int = 0
    """Growth per round above which a round counts as growing."""
    deltas: list[int] = field(default_factory=list)
    """Growth in each measured round."""
    traced: list[bool] = field(default_factory=list)
    """Per round, True when the growth was read from tracemalloc's traces; an untraced
    heap round is judged on an upper bound of its growth instead."""

    def add(self, delta: int, traced: bool = False) -> None:
        self.deltas.append(delta)
        self.traced.append(traced)

    @property
    def grew_every_round(self) -> bool:
        """True when every measured round grew beyond :attr:`threshold`."""
        deltas = self.deltas
        return bool(deltas) and all(delta > self.threshold for delta in deltas)

    @property
    def per_round(self) -> float:
        """Mean growth per round, over the traced rounds when there are any."""
        deltas = [d for d, traced in zip(self.deltas, self.traced, strict=True) if traced]
        deltas = deltas or self.deltas
        return sum(deltas) / len(deltas) if deltas else 0.0


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
    """Measured rounds run under tracemalloc: the ones the sites and types are read from."""
    figures: dict[str, Figure] = field(default_factory=dict)
    """Figures by name."""
    blocks: list[int] = field(default_factory=list)
    """``sys.getallocatedblocks()`` at the baseline and after each round."""
    sites: list[diagnosis.AllocationSite] = field(default_factory=list)
    """Allocation sites of the growth over the traced rounds, biggest first."""
    types: list[diagnosis.TypeGrowth] = field(default_factory=list)
    """Objects allocated during the traced rounds and still alive, by type (``after``)."""
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
            "warmup": self.options.warmup,
            "tolerance": self.options.tolerance,
            "figures": {
                name: {
                    "deltas": list(f.deltas),
                    "traced": list(f.traced),
                    "grew": f.grew_every_round,
                }
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


@dataclass(frozen=True)
class _Reading:
    """The raw figures at one moment; None where a figure is not read."""

    blocks: int
    malloc: int | None
    traced: int | None
    objects: int
    fds: int
    clients: int

    def minus(self, other: _Reading) -> _Reading:
        return _Reading(
            self.blocks - other.blocks,
            _sub(self.malloc, other.malloc),
            _sub(self.traced, other.traced),
            self.objects - other.objects,
            self.fds - other.fds,
            self.clients - other.clients,
        )


def _sub(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


class LeakCheck:
    """Runs a body ``warmup + rounds`` times and judges the figures between runs.

    Iterate it and run the body once per iteration; measurement happens between
    iterations. After the loop :attr:`result` holds the verdict and, for a leak, the
    diagnosis: what survived the traced round, where it was allocated and what holds it.

    ``malloc`` reads the C allocator's bytes in use (the default reads glibc's
    ``mallinfo2``); where there is none (None), the heap cannot be bounded untraced and every
    measured round runs under tracemalloc.
    """

    def __init__(
        self,
        options: LeakCheckOptions,
        label: str = "test body",
        malloc: readings.MallocReader | None = _DEFAULT,
    ) -> None:
        self.options = options
        self.result = LeakResult(label, options)
        self._malloc = _MALLOC if malloc is _DEFAULT else malloc
        self._clients: ClientWatch | None = None
        self._session = diagnosis.TracemallocSession(frames=_FRAMES)
        self._baseline: tracemalloc.Snapshot | None = None
        self._fds: dict[int, str] = {}
        self._last: _Reading | None = None
        self._frozen = False
        # Readings of the check's own making (its lists of figures, a snapshot), taken off
        # every later reading so a tolerance of zero holds for a body that keeps nothing.
        self._book = _Reading(0, 0, 0, 0, 0, 0)
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
        yield from range(options.warmup)
        result = self.result
        figures = result.figures
        thresholds = {
            "heap": options.tolerance,
            "objects": options.tolerance // _BYTES_PER_OBJECT,
            "fds": 0,
            "clients": 0,
        }
        self._clients = ClientWatch.start(options.track)
        if options.single:
            try:
                yield from self._once()
            finally:
                self._clients.close()
            return
        for name in (*options.check, "clients"):
            figures[name] = Figure(name, threshold=thresholds[name])
        # Everything alive now is the baseline: frozen, it is left out of every collection
        # and of gc.get_objects() until the rounds end, so settling and counting cost what
        # the rounds allocated, not what the whole process holds (a full collection of a
        # pytest heap: 30 ms; of the young objects: under 1 ms). Garbage frozen with it is
        # never collected during the rounds, so it cannot hide a round's growth either.
        # A host that froze objects itself keeps its own freeze untouched, and settles fully.
        frozen = self._frozen = gc.get_freeze_count() == 0
        if frozen:
            gc.freeze()
        # Collecting after the freeze costs nothing and still empties the free lists.
        settle()
        self._clients.mark()
        try:
            # Targets as well as numbers: a number free at the baseline (the listing's own)
            # may be a leaked file's by the end.
            self._fds = readings.fd_targets() if "fds" in figures else {}
            # A heap that cannot be bounded untraced (finer than the bound's noise), or a host
            # that traces already: every round is traced.
            if tracemalloc.is_tracing() or (
                "heap" in figures
                and (self._malloc is None or options.tolerance < 2 * _UNTRACED_NOISE)
            ):
                self._trace()
            self._measure()
            for index in range(options.rounds):
                if index == options.rounds - 1 and not self._session.active:
                    self._trace()
                yield options.warmup + index
                settle()
                self._measure()
                result.rounds_run += 1
                if self._session.active:
                    result.traced_rounds += 1
                if not any(f.grew_every_round for f in figures.values()):
                    break
            if result.grown:
                self._diagnose(frozen)
                frozen = False
            result.unreleased = self._clients.unreleased()
            self.finished = True
        finally:
            if frozen:
                gc.unfreeze()
            self._baseline = None
            self._session.stop()
            self._clients.close()

    def _once(self) -> Iterator[int]:
        assert self._clients is not None
        self._clients.mark()
        yield 0
        gc.collect()
        self.result.unreleased = self._clients.unreleased()
        self.finished = True

    def _trace(self) -> None:
        """Start tracing for the rounds to come; the last reading becomes their baseline."""
        if self._frozen and self._last is not None:
            # Frozen again, the young objects at the end are the traced rounds' alone: the
            # only ones with a traceback to read.
            gc.freeze()
        self._session.start()
        if not self._session.owned:
            # The host's traces predate the baseline: growth is what the end adds to them.
            self._baseline = tracemalloc.take_snapshot()
        if self._last is not None:
            self._last = self._read()

    def _read(self) -> _Reading:
        tracing = tracemalloc.is_tracing()
        malloc = self._malloc() if self._malloc is not None else None
        if malloc is not None and tracing:
            # tracemalloc's own tables are malloc'd too; they grow with every trace.
            malloc -= tracemalloc.get_tracemalloc_memory()
        figures = self.result.figures
        reading = _Reading(
            blocks=sys.getallocatedblocks(),
            malloc=malloc,
            traced=tracemalloc.get_traced_memory()[0] if tracing else None,
            # Frozen objects are not listed: this counts what the rounds left, cheaply.
            objects=len(gc.get_objects()) if "objects" in figures else 0,
            fds=readings.fd_count() if "fds" in figures else 0,
            clients=self._clients.count() if self._clients is not None else 0,
        )
        return reading.minus(self._book)

    def _measure(self) -> None:
        now = self._read()
        if self._last is not None:
            self._judge(now.minus(self._last))
        # The previous reading is let go before the bookkeeping is read, as it will be gone
        # by the next reading too.
        self._last = now
        self.result.blocks.append(now.blocks)
        # Whatever the lines above kept (a figure's list grown, a reading) is bookkeeping;
        # what they left for the collector is collected first, as the next settling would
        # (without this the book ran 5-8 blocks a round too high: measured).
        gc.collect()
        after = self._read()
        self._book = _Reading(
            self._book.blocks + after.blocks - now.blocks,
            _add(self._book.malloc, _sub(after.malloc, now.malloc)),
            _add(self._book.traced, _sub(after.traced, now.traced)),
            self._book.objects + after.objects - now.objects,
            0,
            0,
        )

    def _judge(self, delta: _Reading) -> None:
        figures = self.result.figures
        for name in ("objects", "fds", "clients"):
            if name in figures:
                figures[name].add(getattr(delta, name))
        heap = figures.get("heap")
        if heap is None:
            return
        # Two upper bounds of the heap's growth, the lower one judged. Untraced: pymalloc's
        # new blocks at their largest size plus what malloc handed out (growth that only
        # enlarges objects still under 512 bytes is not seen). Traced: the traced bytes,
        # exact, or more than grew when blocks made before tracing began were freed.
        bounds: list[int] = []
        if delta.malloc is not None:
            small = max(delta.blocks, 0) * _SMALL_BLOCK_MAX
            bounds.append(small + max(delta.malloc, 0) + _UNTRACED_NOISE)
        if delta.traced is not None:
            bounds.append(delta.traced)
        if bounds:
            heap.add(min(bounds), traced=delta.traced is not None)
            return
        # Someone else (the host, an installed guard's own session) stopped tracemalloc
        # mid-check and there is no allocator reading: the heap cannot be judged this time.
        _log.warning(
            "runtime_guard: tracemalloc was stopped during the leak check of %s; "
            "its heap figure is not judged",
            self.result.label,
        )
        del figures["heap"]

    def _diagnose(self, frozen: bool) -> None:
        """Name the growth: sites, types, holder, descriptors. Unfreezes the heap."""
        result = self.result
        baseline, self._baseline = self._baseline, None
        findings: scan.Findings | None = None
        opened = (
            {
                fd: target
                for fd, target in readings.fd_targets().items()
                if self._fds.get(fd) != target
            }
            if "fds" in result.figures
            else {}
        )
        try:
            if tracemalloc.is_tracing():
                # Frozen, the heap lists the objects made since the baseline alone.
                young = gc.get_objects()
                roots = [*self.roots, *scan.stack_roots()]
                findings = scan.on_short_stack(scan.survey, young, baseline, roots)
                # Neither list may show up as a referrer in the chain below.
                young = roots = []
        finally:
            if frozen:
                gc.unfreeze()  # the referrer chain needs the whole heap
        self._session.stop()
        if findings is None:  # the host stopped tracemalloc: nothing left to name
            return
        findings.finish(set(opened))
        grown = {figure.name for figure in result.grown}
        if "fds" in grown:
            result.new_fds = sorted(set(opened.values()))
            result.fd_owners = findings.fd_owners
        result.types = [
            diagnosis.TypeGrowth(name, 0, count) for name, count in findings.types.most_common(10)
        ]
        # Naming each site's function reads its source: slow under tracemalloc, which would
        # trace every line read.
        before = baseline or tracemalloc.Snapshot((), findings.snapshot.traceback_limit)
        result.sites = diagnosis.diff_snapshots(
            before, findings.snapshot, limit=10, exclude=scan.PYTEST_FILES
        )
        result.chain = findings.chain or _chain(findings.held)
        findings.held.clear()


def _add(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else a + b


def _chain(candidates: list[object]) -> list[str] | None:
    """The first referrer chain found from the candidates, within one overall budget."""
    deadline = time.monotonic() + 1.0
    while candidates and time.monotonic() < deadline:
        chain = diagnosis.referrer_chain(candidates.pop(0), time_budget=0.5)
        if chain:
            return chain
    return None
