"""The record store: one weak reference per live tracked instance, and its release state.

Three states per instance: alive and unreleased, released (a release method ran, or the
instance holds nothing of its own to release), and collected without ever being released,
which is what ``ResourceWarning`` reports one by one and the tracking registry counts and
attributes. :class:`Entry` keeps the counts of one tracked class; :class:`RecordStore` keeps
the records of all of them. Neither patches anything (:mod:`~runtime_guard.tracking.patching`
does) nor answers queries (:mod:`~runtime_guard.tracking.registry` does).
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime_guard.tracking.sites import Site

if TYPE_CHECKING:
    from runtime_guard.tracking.patching import Patch

__all__ = [
    "BORROWED",
    "MAX_COLLECTED_SITES",
    "RECENT_COLLECTED",
    "RELEASED",
    "UNRELEASED",
    "Entry",
    "Record",
    "RecordStore",
    "borrow",
    "release",
]

_log = logging.getLogger("runtime_guard")

UNRELEASED, RELEASED, BORROWED = 0, 1, 2
"""Record states: borrowed instances (a redis client on a pool it was given) hold nothing
of their own to release."""

MAX_COLLECTED_SITES = 256
"""Distinct sites counted per type for instances collected without release (or counted
without weak references); instances from further sites are counted, not attributed."""

RECENT_COLLECTED = 1000
"""Collections without release remembered one by one, for ``unreleased_since``."""


class Record(weakref.ref):  # type: ignore[type-arg]
    """The weak reference to one tracked instance, carrying what is known about it."""

    __slots__ = ("created", "entry", "key", "site", "state")

    entry: Entry
    key: int
    site: Site
    created: float
    state: int


class Entry:
    """One tracked class: its counts and the patches that feed them.

    The hot path touches one counter per construction; the live and unreleased figures
    are derived from the counters that release and collection keep. They are updated
    without a lock, which would double the cost of a tracked construction: under the GIL
    an ``x += 1`` on an attribute is not interrupted by another thread in CPython 3.11,
    and the rare lost update elsewhere (site counts) only blurs a diagnostic figure.
    """

    __slots__ = (
        "borrowed_live",
        "cls",
        "collected_sites",
        "collected_unreleased",
        "created",
        "dead",
        "fallback_sites",
        "max_live",
        "name",
        "patches",
        "release",
        "released",
        "released_live",
        "weak",
    )

    def __init__(self, cls: type, name: str, max_live: int | None, weak: bool) -> None:
        self.cls = cls
        self.name = name
        self.max_live = max_live
        self.weak = weak
        self.release: tuple[str, ...] = ()
        self.created = 0
        self.dead = 0
        self.released = 0
        self.released_live = 0
        self.borrowed_live = 0
        self.collected_unreleased = 0
        self.collected_sites: dict[Site, int] = {}
        self.fallback_sites: dict[Site, int] = {}
        self.patches: list[Patch] = []

    def live_count(self) -> int:
        if self.weak:
            return max(self.created - self.dead, 0)
        return max(self.created - self.released, 0)

    def unreleased_count(self) -> int:
        if self.weak:
            return max(self.live_count() - self.released_live - self.borrowed_live, 0)
        return self.live_count()


def release(rec: Record) -> None:
    """Mark ``rec`` released (a release method ran); idempotent."""
    state = rec.state
    if state != RELEASED:
        rec.state = RELEASED
        entry = rec.entry
        entry.released += 1
        entry.released_live += 1
        if state == BORROWED:
            entry.borrowed_live -= 1


def borrow(rec: Record, borrowed: bool) -> None:
    """Mark an unreleased ``rec`` borrowed (it owns nothing to release), or undo that."""
    entry = rec.entry
    if borrowed and rec.state == UNRELEASED:
        rec.state = BORROWED
        entry.borrowed_live += 1
    elif not borrowed and rec.state == BORROWED:
        rec.state = UNRELEASED
        entry.borrowed_live -= 1


class RecordStore:
    """Every live tracked instance by ``id()``, and the last collections without release.

    The construction hook reads :attr:`records` and calls :attr:`on_collect` through
    closure cells bound when it is made, so both stay the same objects for the store's
    life: :meth:`clear` empties them in place.
    """

    def __init__(self) -> None:
        self.records: dict[int, Record] = {}
        """Live records by ``id()`` of their instance: the weak-reference callback removes
        an entry before the object's memory (and so its id) can be reused."""
        self.recent: deque[Record] = deque(maxlen=RECENT_COLLECTED)
        """The last collections without release, oldest first, while :attr:`remember_recent`."""
        self.remember_recent = False
        """Whether collections without release are remembered one by one (``marker()``)."""
        self.warned: set[str] = set()
        """Keys of the warnings logged already (each is logged once)."""
        self.on_collect: Callable[[Record], None] = self._collector()
        """The weak-reference callback of every record of this store."""

    def warn_once(self, key: str, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log ``message`` as a warning the first time ``key`` is seen."""
        if key not in self.warned:
            self.warned.add(key)
            _log.warning(message, *args, exc_info=exc_info)

    def _collector(self) -> Callable[[Record], None]:
        records, recent, store = self.records, self.recent, self

        def on_collect(rec: Record) -> None:
            try:
                key = rec.key
                if records.get(key) is not rec:  # forgotten: failed __init__, or untracked
                    return
                del records[key]
                entry = rec.entry
                entry.dead += 1
                state = rec.state
                if state == RELEASED:
                    entry.released_live -= 1
                elif state == BORROWED:
                    entry.borrowed_live -= 1
                elif entry.release:
                    entry.collected_unreleased += 1
                    sites = entry.collected_sites
                    site = rec.site
                    if site in sites or len(sites) < MAX_COLLECTED_SITES:
                        sites[site] = sites.get(site, 0) + 1
                    if store.remember_recent:
                        recent.append(rec)
            except Exception:  # a weakref callback must never raise into whatever freed it
                store.warn_once("collect", "runtime_guard: tracking callback failed", exc_info=True)

        return on_collect

    def add(self, obj: Any, entry: Entry, site: Site, created: float) -> Record:
        """Record ``obj`` (made elsewhere than in a wrapped ``__init__``) under ``entry``."""
        rec = Record(obj, self.on_collect)
        rec.entry = entry
        rec.key = id(obj)
        rec.site = site
        rec.created = created
        rec.state = UNRELEASED
        self.records[rec.key] = rec
        entry.created += 1
        return rec

    def forget(self, rec: Record) -> None:
        """Drop ``rec`` as if its instance had never been made (its ``__init__`` raised)."""
        if self.records.get(rec.key) is rec:
            del self.records[rec.key]
            rec.entry.created -= 1

    def of(self, entry: Entry) -> list[Record]:
        """The live records of ``entry``."""
        return [rec for rec in list(self.records.values()) if rec.entry is entry]

    def drop(self, entry: Entry) -> None:
        """Forget every record of ``entry`` (it is no longer tracked)."""
        for rec in self.of(entry):
            if self.records.get(rec.key) is rec:
                del self.records[rec.key]

    def clear(self) -> None:
        """Forget every record, the recent collections and the warnings logged."""
        self.records.clear()
        self.recent.clear()
        self.remember_recent = False
        self.warned.clear()
