"""The tracking registry: which classes are tracked, and the questions asked of their records.

``track(cls)`` patches a class (:mod:`~runtime_guard.tracking.patching`) so that its
instances are recorded in the registry's :class:`~runtime_guard.tracking.records.RecordStore`;
a dotted name whose module is not imported yet is tracked once it is
(:mod:`~runtime_guard.tracking.imports`). The process has one registry,
:data:`default_registry`, which the module-level functions here use and the installed
guard's tracking component reads; a test can give a component its own
(``TrackingComponent(registry=TrackingRegistry())``). It works without a guard;
:mod:`~runtime_guard.tracking.component` adds the judgement, signals and reports.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

from runtime_guard import _fork
from runtime_guard.tracking import clients as _clients
from runtime_guard.tracking.imports import ImportWatcher, resolve
from runtime_guard.tracking.imports import watcher as _default_watcher
from runtime_guard.tracking.patching import patch_class, unpatch
from runtime_guard.tracking.records import UNRELEASED, Entry, Record, RecordStore
from runtime_guard.tracking.sites import Site

__all__ = [
    "TOP_SITES",
    "Counts",
    "TrackedInstance",
    "TrackingRegistry",
    "counts",
    "default_registry",
    "disable_known_clients",
    "enable_known_clients",
    "entry_summary",
    "group_counts",
    "is_tracked",
    "live_objects",
    "marker",
    "track",
    "tracked_names",
    "unreleased_since",
    "untrack",
    "untrack_all",
]

TOP_SITES = 10
"""Sites listed per type in reports and ``live_objects()``, most instances first."""

_DEFAULT_RELEASE = ("close", "aclose")


@dataclass
class _Request:
    module: str
    attr: str
    max_live: int | None
    name: str
    release: tuple[str, ...] | None
    spec: _clients.ClientSpec | None = None


@dataclass(frozen=True)
class TrackedInstance:
    """One unreleased instance, as :func:`unreleased_since` lists it."""

    type: str
    """The tracked type's name."""
    site: Site
    """Where it was created."""
    age: float
    """Seconds since it was created."""
    state: str
    """``"live"`` (alive, unreleased) or ``"collected"`` (collected without release)."""
    created: float
    """When it was created, in ``time.monotonic()`` seconds."""

    def __str__(self) -> str:
        what = "collected without release" if self.state == "collected" else "live, unreleased"
        return f"{self.type} created at {self.site} ({what}, {self.age:.1f}s old)"


class Counts(NamedTuple):
    """The cheap figures of one tracked type, read on every sample."""

    live: int
    unreleased: int
    released: int
    collected_unreleased: int
    created: int
    max_live: int | None


def _split(dotted: str) -> tuple[str, str]:
    if ":" in dotted:
        module, _, attr = dotted.partition(":")
        return module, attr
    module, _, attr = dotted.rpartition(".")
    if not module or not attr:
        raise ValueError(
            f"expected a class or a dotted name like 'pkg.module.Class', got {dotted!r}"
        )
    return module, attr


def _default_name(cls: type) -> str:
    for spec in _clients.CLIENTS:
        module = sys.modules.get(spec.module)
        if module is not None and resolve(module, spec.attr) is cls:
            return spec.name
    return f"{cls.__module__}.{cls.__qualname__}"


class TrackingRegistry:
    """Tracked classes, the records of their instances, and the queries on them.

    The process has one, :data:`default_registry`; :func:`track` and the other functions of
    this module use it. Patching is process-wide: a class tracked by two registries carries
    two wrappers, and each registry counts its instances.
    """

    def __init__(self, watcher: ImportWatcher | None = None) -> None:
        self.store = RecordStore()
        """The records of every tracked instance."""
        self.watcher = watcher if watcher is not None else ImportWatcher()
        """The import hook that reaches dotted names imported later."""
        self._entries: dict[str, Entry] = {}
        self._pending: dict[str, list[_Request]] = {}
        self._lock = threading.RLock()

    # -- what is tracked ------------------------------------------------------------------

    def track(
        self,
        cls_or_dotted_name: type | str,
        max_live: int | None = None,
        name: str | None = None,
        *,
        release: str | Sequence[str] | None = None,
    ) -> str:
        """:func:`track` on this registry."""
        if max_live is not None and (isinstance(max_live, bool) or max_live < 0):
            raise ValueError(f"max_live must be a whole number of at least 0, got {max_live!r}")
        releases = (
            (release,)
            if isinstance(release, str)
            else (None if release is None else tuple(release))
        )
        if isinstance(cls_or_dotted_name, str):
            module, attr = _split(cls_or_dotted_name)
            request = _Request(module, attr, max_live, name or cls_or_dotted_name, releases)
            for spec in _clients.CLIENTS:
                if spec.name == cls_or_dotted_name or (spec.module, spec.attr) == (module, attr):
                    request.spec = spec
                    if releases is None:
                        request.release = spec.release
            self._request(request)
            return request.name
        if not isinstance(cls_or_dotted_name, type):
            raise TypeError(f"track() expects a class or a dotted name, got {cls_or_dotted_name!r}")
        cls = cls_or_dotted_name
        shown = name or _default_name(cls)
        known = next((s for s in _clients.CLIENTS if s.name == shown), None)
        if releases is None and known is not None:
            releases = known.release
        self._apply(cls, shown, max_live, releases, known)
        return shown

    def _apply(
        self,
        cls: type,
        name: str,
        max_live: int | None,
        release: tuple[str, ...] | None,
        spec: _clients.ClientSpec | None,
    ) -> Entry | None:
        store = self.store
        with self._lock:
            for existing in self._entries.values():
                if existing.cls is cls:
                    if max_live is not None:
                        existing.max_live = max_live
                    return existing
            weak = cls.__weakrefoffset__ != 0
            entry = Entry(cls, name, max_live, weak)
            if release is None:
                release = tuple(m for m in _DEFAULT_RELEASE if callable(getattr(cls, m, None)))
            try:
                patch_class(store, entry, release, spec)
            except (TypeError, AttributeError) as exc:
                store.warn_once(
                    f"patch:{name}",
                    "runtime_guard: cannot track %s: its class cannot be patched (%s)",
                    name,
                    exc,
                )
                return None
            if not weak:
                store.warn_once(
                    f"weak:{name}",
                    "runtime_guard: instances of %s cannot be weak-referenced; counting "
                    "creations and releases only (no collection, no per-instance ages)",
                    name,
                )
            self._entries[name] = entry
            return entry

    def _request(self, request: _Request) -> None:
        with self._lock:
            waiting = self._pending.setdefault(request.module, [])
            waiting.append(request)
            first = len(waiting) == 1
        if first:
            self.watcher.watch(request.module, self._module_loaded)

    def _module_loaded(self, module: ModuleType) -> None:
        with self._lock:
            requests = self._pending.pop(module.__name__, [])
        for request in requests:
            try:
                cls = resolve(module, request.attr)
                if not isinstance(cls, type):
                    self.store.warn_once(
                        f"missing:{request.module}:{request.attr}",
                        "runtime_guard: cannot track %s: %s has no class %r",
                        request.name,
                        request.module,
                        request.attr,
                    )
                    continue
                self._apply(cls, request.name, request.max_live, request.release, request.spec)
            except Exception:  # never break the host's import
                self.store.warn_once(
                    f"apply:{request.name}",
                    "runtime_guard: tracking %s failed",
                    request.name,
                    exc_info=True,
                )

    def untrack(self, cls_or_name: type | str) -> bool:
        """:func:`untrack` on this registry."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                if cls_or_name in (entry.cls, entry.name):
                    self._drop(key, entry)
                    return True
            if isinstance(cls_or_name, str):
                for module, requests in list(self._pending.items()):
                    kept = [
                        r for r in requests if cls_or_name not in (r.name, f"{r.module}.{r.attr}")
                    ]
                    if len(kept) != len(requests):
                        if kept:
                            self._pending[module] = kept
                        else:
                            del self._pending[module]
                        return True
        return False

    def _drop(self, key: str, entry: Entry) -> None:
        unpatch(entry)
        self.store.drop(entry)
        del self._entries[key]

    def untrack_all(self) -> None:
        """:func:`untrack_all` on this registry."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                self._drop(key, entry)
            self._pending.clear()
            self.watcher.clear()
            self.store.recent.clear()

    def enable_known_clients(self) -> None:
        """:func:`enable_known_clients` on this registry."""
        with self._lock:
            for spec in _clients.CLIENTS:
                if spec.name in self._entries or any(
                    r.name == spec.name for rs in self._pending.values() for r in rs
                ):
                    continue
                self._request(_Request(spec.module, spec.attr, None, spec.name, spec.release, spec))

    def disable_known_clients(self) -> None:
        """:func:`disable_known_clients` on this registry."""
        for spec in _clients.CLIENTS:
            self.untrack(spec.name)

    def is_tracked(self, cls_or_name: type | str) -> bool:
        """:func:`is_tracked` on this registry."""
        return any(cls_or_name in (e.cls, e.name) for e in list(self._entries.values()))

    def tracked_names(self) -> list[str]:
        """:func:`tracked_names` on this registry."""
        return sorted(self._entries)

    def declare(self, name: str, cls: type) -> Entry:
        """An entry for instances of ``cls`` that a hook of the caller's records (through
        ``store.add``) rather than a wrapped ``__init__``: nothing is patched."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                entry = self._entries[name] = Entry(cls, name, None, weak=True)
            return entry

    def entry(self, name: str) -> Entry | None:
        """The counts of tracked type ``name`` as the hot path keeps them, or ``None``."""
        return self._entries.get(name)

    # -- queries --------------------------------------------------------------------------

    def marker(self) -> int:
        """:func:`marker` on this registry."""
        self.store.remember_recent = True
        return time.monotonic_ns()

    def unreleased_since(self, mark: int, *, collected: bool = True) -> list[TrackedInstance]:
        """:func:`unreleased_since` on this registry."""
        since = mark / 1e9
        now = time.monotonic()
        out = [
            TrackedInstance(rec.entry.name, rec.site, now - rec.created, "live", rec.created)
            for rec in list(self.store.records.values())
            if rec.created > since and rec.state == UNRELEASED
        ]
        if collected:
            out.extend(
                TrackedInstance(
                    rec.entry.name, rec.site, now - rec.created, "collected", rec.created
                )
                for rec in list(self.store.recent)
                if rec.created > since
            )
        out.sort(key=lambda item: item.created)
        return out

    def live_objects(self) -> dict[str, dict[str, Any]]:
        """:func:`live_objects` on this registry."""
        now = time.monotonic()
        by_entry: dict[int, list[Record]] = {}
        for rec in list(self.store.records.values()):  # one pass, not one per type
            by_entry.setdefault(id(rec.entry), []).append(rec)
        return {
            name: _summary(entry, now, by_entry.get(id(entry), []))
            for name, entry in sorted(list(self._entries.items()))
        }

    def counts(self) -> dict[str, Counts]:
        """:func:`counts` on this registry."""
        return {
            name: Counts(
                e.live_count(),
                e.unreleased_count(),
                e.released,
                e.collected_unreleased,
                e.created,
                e.max_live,
            )
            for name, e in sorted(list(self._entries.items()))
        }

    def entry_summary(self, name: str) -> dict[str, Any] | None:
        """:func:`entry_summary` on this registry."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        return _summary(entry, time.monotonic(), self.store.of(entry))

    # -- lifecycle ------------------------------------------------------------------------

    def reset(self) -> None:
        """Untrack everything and forget every record, marker and warning (for tests:
        ``runtime_guard.testing.reset``)."""
        self.untrack_all()
        self.store.clear()

    def after_fork(self) -> None:
        """In a forked child: fresh locks (another thread may have held them at the fork)."""
        self._lock = threading.RLock()
        self.watcher.after_fork()


def _group(records: Iterable[Record], now: float, limit: int = TOP_SITES) -> list[dict[str, Any]]:
    by_site: dict[Site, list[float]] = {}
    unreleased: dict[Site, int] = {}
    for rec in records:
        by_site.setdefault(rec.site, []).append(rec.created)
        if rec.state == UNRELEASED:
            unreleased[rec.site] = unreleased.get(rec.site, 0) + 1
    grouped: dict[tuple[str, int, str], dict[str, Any]] = {}
    for site, created in by_site.items():
        where = site.where
        row = grouped.get(where)
        if row is None:
            row = grouped[where] = {
                **site.to_dict(),
                "count": 0,
                "unreleased": 0,
                "oldest_age": 0.0,
            }
        row["count"] += len(created)
        row["unreleased"] += unreleased.get(site, 0)
        row["oldest_age"] = round(max(row["oldest_age"], now - min(created)), 3)
    rows = sorted(grouped.values(), key=lambda r: (-r["unreleased"], -r["count"], r["site"]))
    return rows[:limit]


def group_counts(counts: dict[Site, int], limit: int = TOP_SITES) -> list[dict[str, Any]]:
    """Rows of ``site`` fields and ``count`` for a per-site count table, most first; sites
    of one line (reached from different callers) are one row."""
    grouped: dict[tuple[str, int, str], dict[str, Any]] = {}
    for site, count in list(counts.items()):
        row = grouped.get(site.where)
        if row is None:
            row = grouped[site.where] = {**site.to_dict(), "count": 0}
        row["count"] += count
    return sorted(grouped.values(), key=lambda r: (-r["count"], r["site"]))[:limit]


def _summary(entry: Entry, now: float, records: list[Record]) -> dict[str, Any]:
    oldest = min((rec.created for rec in records), default=None)
    return {
        "live": entry.live_count(),
        "unreleased": entry.unreleased_count(),
        "released": entry.released,
        "collected_unreleased": entry.collected_unreleased,
        "created": entry.created,
        "max_live": entry.max_live,
        "release_methods": list(entry.release),
        "oldest_age": None if oldest is None else round(now - oldest, 3),
        "sites": _group(records, now) if entry.weak else group_counts(entry.fallback_sites),
        "collected_sites": group_counts(entry.collected_sites),
    }


default_registry = TrackingRegistry(_default_watcher)
"""The registry :func:`track` and the other functions of this module use."""
_fork.after_fork_in_child(default_registry.after_fork)


# -- the default registry's functions: the public API --------------------------------------


def track(
    cls_or_dotted_name: type | str,
    max_live: int | None = None,
    name: str | None = None,
    *,
    release: str | Sequence[str] | None = None,
) -> str:
    """Count live instances of a class and its subclasses, with creation times and sites.

    ``cls_or_dotted_name`` is a class or ``"pkg.module.Class"``; a dotted name whose module
    is not imported yet is tracked from the moment it is. ``max_live`` is the live count
    above which an installed guard reports the type. ``release`` names the methods that
    release an instance (default: the known client's, else ``close``/``aclose`` if the
    class has them; ``()`` for none). Returns the name the type is reported under.
    Tracking again updates ``max_live``. A class that cannot be patched is logged once and
    not tracked.
    """
    return default_registry.track(cls_or_dotted_name, max_live, name, release=release)


def untrack(cls_or_name: type | str) -> bool:
    """Stop tracking a class (by class, report name or dotted name); restores it exactly."""
    return default_registry.untrack(cls_or_name)


def untrack_all() -> None:
    """Stop all tracking, remove every patch and the import hook."""
    default_registry.untrack_all()


def enable_known_clients() -> None:
    """Track every class of :data:`runtime_guard.tracking.clients.CLIENTS`, now or once imported."""
    default_registry.enable_known_clients()


def disable_known_clients() -> None:
    """Stop tracking the known clients (user ``track()`` calls stay)."""
    default_registry.disable_known_clients()


def is_tracked(cls_or_name: type | str) -> bool:
    """True while a class (or report name) is tracked."""
    return default_registry.is_tracked(cls_or_name)


def tracked_names() -> list[str]:
    """Names of the tracked types, sorted."""
    return default_registry.tracked_names()


def marker() -> int:
    """A point in time for :func:`unreleased_since` (``time.monotonic_ns()``).

    The first call also starts remembering the last 1000 collections without release,
    which only :func:`unreleased_since` needs.
    """
    return default_registry.marker()


def unreleased_since(mark: int, *, collected: bool = True) -> list[TrackedInstance]:
    """Unreleased instances created after ``mark`` (from :func:`marker`): live ones and,
    with ``collected``, those collected without release, each with its site; oldest first.

    Collected ones are remembered for the last 1000 such collections only.
    """
    return default_registry.unreleased_since(mark, collected=collected)


def live_objects() -> dict[str, dict[str, Any]]:
    """Per tracked type: live, unreleased, released, collected-without-release and created
    counts, ``max_live``, the age of the oldest live instance and the top creation sites
    (``site``, ``file``, ``line``, ``function``, ``stack``, ``count``, ``unreleased``,
    ``oldest_age``), most unreleased first. JSON-ready.
    """
    return default_registry.live_objects()


def counts() -> dict[str, Counts]:
    """Per tracked type, its :class:`Counts` (no site grouping: cheap on every sample)."""
    return default_registry.counts()


def entry_summary(name: str) -> dict[str, Any] | None:
    """``live_objects()[name]`` for one type, or ``None`` when it is not tracked."""
    return default_registry.entry_summary(name)
