"""The diagnosis window: what it watches while open, and what it concludes when it closes.

A window traces with tracemalloc for a few seconds: from tracemalloc's start every traced
allocation is new, so what is still traced at the end is what the process kept, at every
size (a 100 KB ``bytes`` too: large objects go through ``PyObject_Malloc`` and are traced),
and no baseline snapshot of the whole heap is needed. It closes once it has seen enough
kept allocations to name their line (:data:`ENOUGH_TRACED`), after :data:`MIN_SECONDS`, or
at ``leak_diagnosis_window`` at the latest. Then, in order:

1. the sites: the snapshot's allocations grouped by the user's line (:mod:`~runtime_guard._frames`);
2. the holder: a forward search from the user's code to an object allocated at the top
   line, while tracemalloc still traces (:mod:`~runtime_guard.diagnosis.holders`);
3. tracemalloc stops; the holder's retained size (pympler, sampled), the picture of its
   chain (objgraph and Graphviz) and the ranking of routes follow, untraced.

Without tracemalloc (``tracemalloc="off"``, or it could not run), a type census at both ends
names what grew, and the holder of a recent instance of it is searched the same way.
Each step that holds the GIL in one stretch is timed; the longest is in the report.
"""

from __future__ import annotations

import _tracemalloc
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime_guard import diagnosis

if TYPE_CHECKING:
    import tracemalloc

    from runtime_guard.diagnosis.census import TypeGrowth
    from runtime_guard.diagnosis.holders import Found
    from runtime_guard.diagnosis.sites import AllocationSite
    from runtime_guard.diagnosis.tracing import TracemallocSession

__all__ = ["ENOUGH_TRACED", "MIN_SECONDS", "Conclusion", "Window", "conclude"]

ENOUGH_TRACED = 256 * 1024
"""Kept bytes a window needs to see before it may close early: several times what the
allocations in flight at any moment of a server amount to, so the top line is the leak's."""

MIN_SECONDS = 2.0
"""A window stays open at least this long (or ``leak_diagnosis_window``, if shorter)."""

_TOP = 10
_MIN_CHAIN_GROWTH = 10

# Types whose growth is the interpreter's or a library's bookkeeping (classes, their bound
# methods and cells), never what an application keeps: no chain is searched for them.
_NOT_EXPLAINING = frozenset(
    {
        "type",
        "abc.ABCMeta",
        "function",
        "cell",
        "builtin_function_or_method",
        "method",
        "method-wrapper",
        "getset_descriptor",
        "member_descriptor",
        "wrapper_descriptor",
        "method_descriptor",
        "code",
        "frame",
    }
)


def pause() -> None:
    """Give the GIL to other threads between slices of a long step."""
    time.sleep(0.001)


@dataclass
class Window:
    """An open diagnosis window."""

    started: float
    """Monotonic time it opened."""
    min_end: float
    max_end: float
    reason: str
    """``"growth"``, or why an operator or another part of the guard asked for it."""
    session: TracemallocSession | None = None
    baseline: tracemalloc.Snapshot | None = None
    """A snapshot at the start, only when the host traced before the window."""
    census: Counter[str] | None = None
    """A type census at the start, only when the window does not trace."""
    traced_at_start: int = 0
    rss_at_start: int = 0
    skipped: str = ""
    """Why tracemalloc does not run in this window, when it does not."""
    avoid: set[int] = field(default_factory=set)
    """``id()`` of holders an earlier diagnosis found not growing: searched past."""
    steps: dict[str, float] = field(default_factory=dict)
    """Seconds of each step, pauses for other threads included."""
    longest_hold: float = 0.0
    """The longest stretch any step held the GIL without a pause."""

    def traced_growth(self) -> int | None:
        """Bytes traced now beyond the start, while tracing; None otherwise."""
        if self.session is None or not _tracemalloc.is_tracing():
            return None
        return int(_tracemalloc.get_traced_memory()[0]) - self.traced_at_start

    def enough(self, now: float) -> bool:
        """True when the window may close now."""
        if now >= self.max_end:
            return True
        if now < self.min_end:
            return False
        grown = self.traced_growth()
        return grown is not None and grown >= ENOUGH_TRACED

    @contextmanager
    def step(self, name: str, sliced: dict[str, float] | None = None) -> Iterator[None]:
        """Time a step; ``sliced`` (filled by the step) gives its longest slice, when it
        pauses for other threads between slices."""
        begun = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - begun
            self.steps[name] = self.steps.get(name, 0.0) + took
            held = sliced.get("longest_slice", took) if sliced is not None else took
            self.longest_hold = max(self.longest_hold, held)


@dataclass
class Conclusion:
    """What a closed window found."""

    sites: list[AllocationSite] = field(default_factory=list)
    growing_types: list[TypeGrowth] = field(default_factory=list)
    traced_growth: int | None = None
    """Bytes tracemalloc saw kept over the window (None without tracemalloc)."""
    found: Found | None = None
    chain_type: str | None = None
    chain: list[str] | None = None
    """A backwards referrer chain, when the forward search found nothing."""
    longest_step: float = 0.0
    young: float | None = None
    """Share of the holder's entries made during the window (its tracemalloc lifetime)."""


def conclude(
    window: Window,
    *,
    search_seconds: float,
    chain_depth: int,
    own_type: Callable[[str], bool],
) -> Conclusion:
    """Read what the window saw, while tracemalloc still traces (the caller stops it)."""
    out = Conclusion()
    session = window.session
    if session is not None and _tracemalloc.is_tracing():
        import tracemalloc

        out.traced_growth = window.traced_growth()
        with window.step("snapshot"):
            after = session.snapshot()
        baseline = window.baseline or tracemalloc.Snapshot([], after.traceback_limit)
        sliced: dict[str, float] = {}
        with window.step("sites", sliced):
            out.sites = diagnosis.diff_snapshots(
                baseline, after, limit=_TOP, pause=pause, stats=sliced
            )
        pause()
        del after, baseline
        window.baseline = None
        if out.sites:
            from runtime_guard.diagnosis.holders import find_holder

            top = out.sites[0]
            stats: dict[str, float] = {}
            with window.step("holder search", stats):
                out.found = find_holder(
                    (top.filename, top.lineno),
                    avoid=window.avoid,
                    seconds=search_seconds,
                    pause=pause,
                    stats=stats,
                )
            if out.found is not None:
                from runtime_guard.diagnosis.holders import young_share

                with window.step("holder age"):
                    out.young = young_share(out.found.path[out.found.holder])
    elif window.census is not None:
        with window.step("census"):
            census = diagnosis.type_census()
        growing = [
            g
            for g in diagnosis.census_diff(window.census, census, _TOP * 2)
            if not own_type(g.type_name)
        ]
        out.growing_types = growing[:_TOP]
        window.census = None
        out.chain_type = _chain_type(out.growing_types)
        if out.chain_type is not None:
            _search_instance(out, window, search_seconds, chain_depth)
    out.longest_step = window.longest_hold
    return out


def _search_instance(out: Conclusion, window: Window, seconds: float, depth: int) -> None:
    """The holder of a recent instance of the type that grew most: forwards from the user's
    code first, backwards from the instance only when that finds nothing."""
    from runtime_guard.diagnosis.holders import find_holder

    assert out.chain_type is not None
    with window.step("instance search"):
        instance = diagnosis.find_instance(out.chain_type, None, seconds)
    if instance is None:
        return
    stats: dict[str, float] = {}
    with window.step("holder search", stats):
        out.found = find_holder(None, target=instance, seconds=seconds, pause=pause, stats=stats)
    if out.found is None:
        with window.step("referrer chain"):
            out.chain = diagnosis.referrer_chain(instance, depth, seconds)
    del instance


def _chain_type(growing: list[TypeGrowth]) -> str | None:
    """The type to explain: the fastest-growing one, preferring a class the code defines.

    A recent ``dict`` or ``list`` could be anyone's, so a defined class growing at least a
    quarter as fast wins over a builtin. Weak references and classes grow with every class
    a library defines and a handful of new objects explains nothing: neither is chosen.
    """
    growing = [
        g
        for g in growing
        if g.growth >= _MIN_CHAIN_GROWTH
        and not g.type_name.startswith(("weakref.", "_weakref", "_abc."))
        and g.type_name not in _NOT_EXPLAINING
    ]
    if not growing:
        return None
    top = growing[0]
    for growth in growing:
        if "." in growth.type_name and growth.growth * 4 >= top.growth:
            return growth.type_name
    return top.type_name


def describe_found(found: Found) -> dict[str, Any]:
    """The holder's type and the type of what it holds, for the report."""
    holder = found.path[found.holder]
    item = found.path[found.holder + 1] if found.holder + 1 < len(found.path) else found.path[-1]
    return {
        "type_name": diagnosis.type_name(type(holder)),
        "item_type": diagnosis.type_name(type(item)),
    }
