"""The process-wide registry of tracked classes: patches, live records, release states.

``track(cls)`` wraps the class's ``__init__`` (and its release methods: for known clients
``close``/``aclose``/``dispose``...) so that each new instance gets a weak reference that
carries its creation time and site. Three states per instance: alive and unreleased,
released (a release method ran, or the instance holds nothing to release), and collected
without ever being released, which is what ``ResourceWarning`` reports one by one and this
module counts and attributes. It works without a guard; :mod:`runtime_guard.tracking`
adds the judgement, signals and reports.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

from runtime_guard.tracking import clients as _clients
from runtime_guard.tracking import sites as _sites
from runtime_guard.tracking.sites import Site

__all__ = [
    "TOP_SITES",
    "Counts",
    "TrackedInstance",
    "counts",
    "disable_known_clients",
    "enable_known_clients",
    "entry_summary",
    "is_tracked",
    "live_objects",
    "marker",
    "track",
    "tracked_names",
    "unreleased_since",
    "untrack",
    "untrack_all",
]

_log = logging.getLogger("runtime_guard")

TOP_SITES = 10
"""Sites listed per type in reports and ``live_objects()``, most instances first."""

_MAX_COLLECTED_SITES = 256
_RECENT_COLLECTED = 1000
_DEFAULT_RELEASE = ("close", "aclose")


UNRELEASED, RELEASED, BORROWED = 0, 1, 2
"""Record states: borrowed instances (a redis client on a pool it was given) hold nothing
of their own to release."""


class _Record(weakref.ref):  # type: ignore[type-arg]
    """The weak reference to one tracked instance, carrying what is known about it."""

    __slots__ = ("created", "entry", "key", "site", "state")

    entry: _Entry
    key: int
    site: Site
    created: float
    state: int


_records: dict[int, _Record] = {}
"""Every live tracked instance by ``id()``: the weak-reference callback removes an entry
before the object's memory (and so its id) can be reused."""

_recent_collected: deque[_Record] = deque(maxlen=_RECENT_COLLECTED)
_recent_wanted = False
_lock = threading.RLock()
_entries: dict[str, _Entry] = {}
_pending: dict[str, list[_Request]] = {}
_warned: set[str] = set()


@dataclass
class _Request:
    module: str
    attr: str
    max_live: int | None
    name: str
    release: tuple[str, ...] | None
    spec: _clients.ClientSpec | None = None


@dataclass
class _Patch:
    owner: type
    attr: str
    had: bool
    original: Any


class _Entry:
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
        self.patches: list[_Patch] = []

    def live_count(self) -> int:
        if self.weak:
            return max(self.created - self.dead, 0)
        return max(self.created - self.released, 0)

    def unreleased_count(self) -> int:
        if self.weak:
            return max(self.live_count() - self.released_live - self.borrowed_live, 0)
        return self.live_count()

    def records(self) -> list[_Record]:
        return [rec for rec in list(_records.values()) if rec.entry is self]


def _warn_once(key: str, message: str, *args: Any, exc_info: bool = False) -> None:
    if key not in _warned:
        _warned.add(key)
        _log.warning(message, *args, exc_info=exc_info)


# -- the hot path: construction, release, collection --------------------------------------


def _on_collect(rec: _Record) -> None:
    try:
        key = rec.key
        if _records.get(key) is not rec:  # forgotten: failed __init__, or untracked since
            return
        del _records[key]
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
            if site in sites or len(sites) < _MAX_COLLECTED_SITES:
                sites[site] = sites.get(site, 0) + 1
            if _recent_wanted:
                _recent_collected.append(rec)
    except Exception:  # a weakref callback must never raise into whatever freed the object
        _warn_once("collect", "runtime_guard: tracking callback failed", exc_info=True)


def _mark(rec: _Record) -> None:
    state = rec.state
    if state != RELEASED:
        rec.state = RELEASED
        entry = rec.entry
        entry.released += 1
        entry.released_live += 1
        if state == BORROWED:
            entry.borrowed_live -= 1


def _init_wrapper(
    entry: _Entry, original: Callable[..., None], owns: Callable[[Any], bool] | None
) -> Callable[..., None]:
    # Everything the wrapper uses is bound here, as closure cells: it runs on every
    # construction of a tracked class (measured in benchmarks/bench_tracking.py).
    records = _records
    capture = _sites.capture
    monotonic = time.monotonic
    on_collect = _on_collect
    new_record = _Record

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        key = id(self)
        # A tracked subclass's wrapper ran first and counted this instance already.
        if key in records:
            return original(self, *args, **kwargs)
        rec = new_record(self, on_collect)
        rec.entry = entry
        rec.key = key
        rec.site = capture(1)
        rec.created = monotonic()
        rec.state = 0  # UNRELEASED, as a constant rather than a global lookup
        records[key] = rec
        entry.created += 1
        try:
            original(self, *args, **kwargs)
        except BaseException:
            _forget(rec)
            raise
        if owns is not None and not _safe(owns, self):
            _borrow(rec, True)

    return __init__


def _counting_init_wrapper(entry: _Entry, original: Callable[..., None]) -> Callable[..., None]:
    # Instances that cannot be weak-referenced are counted (created minus released) and
    # attributed, but their collection cannot be seen.
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        entry.created += 1
        site = _sites.capture(1)
        sites = entry.fallback_sites
        if site in sites or len(sites) < _MAX_COLLECTED_SITES:
            sites[site] = sites.get(site, 0) + 1
        return original(self, *args, **kwargs)

    return __init__


def _borrow(rec: _Record, borrowed: bool) -> None:
    entry = rec.entry
    if borrowed and rec.state == UNRELEASED:
        rec.state = BORROWED
        entry.borrowed_live += 1
    elif not borrowed and rec.state == BORROWED:
        rec.state = UNRELEASED
        entry.borrowed_live -= 1


def _factory_wrapper(func: Callable[..., Any], owns: Callable[[Any], bool]) -> Callable[..., Any]:
    # ``Redis.from_url()`` decides whether the client owns its pool after ``__init__`` has
    # returned, so ownership is judged again once the factory returns.
    @functools.wraps(func)
    def factory(cls: type, *args: Any, **kwargs: Any) -> Any:
        made = func(cls, *args, **kwargs)
        rec = _records.get(id(made))
        if rec is not None and rec.state == BORROWED:
            _borrow(rec, not _safe(owns, made))
        return made

    return factory


def _safe(predicate: Callable[[Any], bool], obj: Any) -> bool:
    try:
        return bool(predicate(obj))
    except Exception:
        return True


def _forget(rec: _Record) -> None:
    if _records.get(rec.key) is rec:
        del _records[rec.key]
        rec.entry.created -= 1


def _in_finalizer(depth: int) -> bool:
    # ``redis.Redis.__del__`` calls ``close()``: a release run by the finalizer is the
    # collected-without-release case, not a release by the program. Frame 3 is the caller
    # of the release wrapper.
    try:
        frame: Any = sys._getframe(3)
    except ValueError:  # called with no caller at all (from atexit, a C callback)
        return False
    while frame is not None and depth > 0:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
        depth -= 1
    return False


def _calling_first(
    release: Callable[[Any], None], original: Callable[..., Any]
) -> Callable[..., Any]:
    """Wrap a release method so that ``release(self)`` runs first; async stays async.

    ``release`` runs in the frame right below the wrapper: ``_in_finalizer`` counts on it.
    """
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def arelease(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                release(self)
            except Exception:  # the host's close() must close whatever the counting does
                _warn_once("release", "runtime_guard: counting a release failed", exc_info=True)
            return await original(self, *args, **kwargs)

        return arelease

    @functools.wraps(original)
    def srelease(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            release(self)
        except Exception:  # the host's close() must close whatever the counting does
            _warn_once("release", "runtime_guard: counting a release failed", exc_info=True)
        return original(self, *args, **kwargs)

    return srelease


def _release_wrapper(entry: _Entry, original: Callable[..., Any]) -> Callable[..., Any]:
    records = _records

    def release(self: Any) -> None:
        if not entry.weak:
            entry.released += 1
            return
        rec = records.get(id(self))
        if rec is not None and rec.state != RELEASED and not _in_finalizer(1):
            _mark(rec)

    return _calling_first(release, original)


def _companion_wrapper(
    entry: _Entry, original: Callable[..., Any], link: str
) -> Callable[..., Any]:
    def release(resource: Any) -> None:
        if _in_finalizer(6):
            return
        for rec in entry.records():
            obj = rec()
            if obj is not None and rec.state != RELEASED and getattr(obj, link, None) is resource:
                _mark(rec)

    return _calling_first(release, original)


# -- patching -----------------------------------------------------------------------------


def _patch(entry: _Entry, owner: type, attr: str, replacement: Any) -> None:
    had = attr in owner.__dict__
    original = owner.__dict__.get(attr)
    setattr(owner, attr, replacement)
    entry.patches.append(_Patch(owner, attr, had, original))


def _unpatch(entry: _Entry) -> None:
    for patch in reversed(entry.patches):
        try:
            if patch.had:
                setattr(patch.owner, patch.attr, patch.original)
            else:
                delattr(patch.owner, patch.attr)
        except (AttributeError, TypeError):
            _log.warning(
                "runtime_guard: could not restore %s.%s", patch.owner.__qualname__, patch.attr
            )
    entry.patches.clear()


def _inherited_init(cls: type) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        super(cls, self).__init__(*args, **kwargs)  # type: ignore[arg-type]

    parent = next(
        (k.__dict__["__init__"] for k in cls.__mro__[1:] if "__init__" in k.__dict__), None
    )
    if inspect.isfunction(parent):
        functools.update_wrapper(__init__, parent)
    return __init__


def _apply(
    cls: type,
    name: str,
    max_live: int | None,
    release: tuple[str, ...] | None,
    *,
    spec: _clients.ClientSpec | None = None,
) -> _Entry | None:
    with _lock:
        for existing in _entries.values():
            if existing.cls is cls:
                if max_live is not None:
                    existing.max_live = max_live
                return existing
        weak = cls.__weakrefoffset__ != 0
        entry = _Entry(cls, name, max_live, weak)
        if release is None:
            release = tuple(m for m in _DEFAULT_RELEASE if callable(getattr(cls, m, None)))
        original = cls.__dict__.get("__init__")
        if not (inspect.isfunction(original) or original is None):
            original = None
        try:
            base = original if original is not None else _inherited_init(cls)
            _patch_all(entry, base, release, spec)
        except (TypeError, AttributeError) as exc:
            _unpatch(entry)
            _warn_once(
                f"patch:{name}",
                "runtime_guard: cannot track %s: its class cannot be patched (%s)",
                name,
                exc,
            )
            return None
        if not weak:
            _warn_once(
                f"weak:{name}",
                "runtime_guard: instances of %s cannot be weak-referenced; counting "
                "creations and releases only (no collection, no per-instance ages)",
                name,
            )
        _entries[name] = entry
        return entry


def _patch_all(
    entry: _Entry,
    init: Callable[..., None],
    release: tuple[str, ...],
    spec: _clients.ClientSpec | None,
) -> None:
    cls = entry.cls
    owns = None if spec is None else spec.owns
    if entry.weak:
        _patch(entry, cls, "__init__", _init_wrapper(entry, init, owns))
    else:
        _patch(entry, cls, "__init__", _counting_init_wrapper(entry, init))
    if spec is not None and owns is not None:
        for factory in spec.factories:
            raw = cls.__dict__.get(factory)
            if isinstance(raw, classmethod) and inspect.isfunction(raw.__func__):
                _patch(entry, cls, factory, classmethod(_factory_wrapper(raw.__func__, owns)))
    patched = []
    for method in release:
        found = inspect.getattr_static(cls, method, None)
        if inspect.isfunction(found):
            _patch(entry, cls, method, _release_wrapper(entry, found))
            patched.append(method)
    entry.release = tuple(patched)
    for companion in () if spec is None else spec.companions:
        module = sys.modules.get(companion.module)
        owner = None if module is None else _clients.resolve(module, companion.attr)
        if not isinstance(owner, type):
            continue
        for method in companion.methods:
            found = inspect.getattr_static(owner, method, None)
            if inspect.isfunction(found):
                _patch(entry, owner, method, _companion_wrapper(entry, found, companion.link))


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
        if module is not None and _clients.resolve(module, spec.attr) is cls:
            return spec.name
    return f"{cls.__module__}.{cls.__qualname__}"


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
    if max_live is not None and (isinstance(max_live, bool) or max_live < 0):
        raise ValueError(f"max_live must be a whole number of at least 0, got {max_live!r}")
    releases = (
        (release,) if isinstance(release, str) else (None if release is None else tuple(release))
    )
    if isinstance(cls_or_dotted_name, str):
        module, attr = _split(cls_or_dotted_name)
        request = _Request(module, attr, max_live, name or cls_or_dotted_name, releases)
        for spec in _clients.CLIENTS:
            if spec.name == cls_or_dotted_name or (spec.module, spec.attr) == (module, attr):
                request.spec = spec
                if releases is None:
                    request.release = spec.release
        _request(request)
        return request.name
    if not isinstance(cls_or_dotted_name, type):
        raise TypeError(f"track() expects a class or a dotted name, got {cls_or_dotted_name!r}")
    cls = cls_or_dotted_name
    shown = name or _default_name(cls)
    known = next((s for s in _clients.CLIENTS if s.name == shown), None)
    _apply(
        cls,
        shown,
        max_live,
        known.release if releases is None and known is not None else releases,
        spec=known,
    )
    return shown


def _request(request: _Request) -> None:
    with _lock:
        waiting = _pending.setdefault(request.module, [])
        waiting.append(request)
        first = len(waiting) == 1
    if first:
        _clients.watcher.watch(request.module, _module_loaded)


def _module_loaded(module: ModuleType) -> None:
    with _lock:
        requests = _pending.pop(module.__name__, [])
    for request in requests:
        try:
            cls = _clients.resolve(module, request.attr)
            if not isinstance(cls, type):
                _warn_once(
                    f"missing:{request.module}:{request.attr}",
                    "runtime_guard: cannot track %s: %s has no class %r",
                    request.name,
                    request.module,
                    request.attr,
                )
                continue
            _apply(cls, request.name, request.max_live, request.release, spec=request.spec)
        except Exception:  # never break the host's import
            _warn_once(
                f"apply:{request.name}",
                "runtime_guard: tracking %s failed",
                request.name,
                exc_info=True,
            )


def untrack(cls_or_name: type | str) -> bool:
    """Stop tracking a class (by class, report name or dotted name); restores it exactly."""
    with _lock:
        for key, entry in list(_entries.items()):
            if cls_or_name in (entry.cls, entry.name):
                _drop(key, entry)
                return True
        if isinstance(cls_or_name, str):
            for module, requests in list(_pending.items()):
                kept = [r for r in requests if cls_or_name not in (r.name, f"{r.module}.{r.attr}")]
                if len(kept) != len(requests):
                    if kept:
                        _pending[module] = kept
                    else:
                        del _pending[module]
                    return True
    return False


def _drop(key: str, entry: _Entry) -> None:
    _unpatch(entry)
    for rec in entry.records():
        if _records.get(rec.key) is rec:
            del _records[rec.key]
    del _entries[key]


def untrack_all() -> None:
    """Stop all tracking, remove every patch and the import hook."""
    with _lock:
        for key, entry in list(_entries.items()):
            _drop(key, entry)
        _pending.clear()
        _clients.watcher.clear()
        _recent_collected.clear()


def enable_known_clients() -> None:
    """Track every class of :data:`runtime_guard.tracking.clients.CLIENTS`, now or once imported."""
    for spec in _clients.CLIENTS:
        if spec.name in _entries or any(
            r.name == spec.name for rs in _pending.values() for r in rs
        ):
            continue
        _request(_Request(spec.module, spec.attr, None, spec.name, spec.release, spec))


def disable_known_clients() -> None:
    """Stop tracking the known clients (user ``track()`` calls stay)."""
    for spec in _clients.CLIENTS:
        untrack(spec.name)


def is_tracked(cls_or_name: type | str) -> bool:
    """True while a class (or report name) is tracked."""
    return any(cls_or_name in (e.cls, e.name) for e in list(_entries.values()))


def tracked_names() -> list[str]:
    """Names of the tracked types, sorted."""
    return sorted(_entries)


# -- reading the registry -----------------------------------------------------------------


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


def marker() -> int:
    """A point in time for :func:`unreleased_since` (``time.monotonic_ns()``).

    The first call also starts remembering the last 1000 collections without release,
    which only :func:`unreleased_since` needs.
    """
    global _recent_wanted
    _recent_wanted = True
    return time.monotonic_ns()


def unreleased_since(mark: int, *, collected: bool = True) -> list[TrackedInstance]:
    """Unreleased instances created after ``mark`` (from :func:`marker`): live ones and,
    with ``collected``, those collected without release, each with its site; oldest first.

    Collected ones are remembered for the last 1000 such collections only.
    """
    since = mark / 1e9
    now = time.monotonic()
    out = [
        TrackedInstance(rec.entry.name, rec.site, now - rec.created, "live", rec.created)
        for rec in list(_records.values())
        if rec.created > since and rec.state == UNRELEASED
    ]
    if collected:
        out.extend(
            TrackedInstance(rec.entry.name, rec.site, now - rec.created, "collected", rec.created)
            for rec in list(_recent_collected)
            if rec.created > since
        )
    out.sort(key=lambda item: item.created)
    return out


def _group(records: Iterable[_Record], now: float, limit: int = TOP_SITES) -> list[dict[str, Any]]:
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


def _group_counts(counts: dict[Site, int], limit: int = TOP_SITES) -> list[dict[str, Any]]:
    grouped: dict[tuple[str, int, str], dict[str, Any]] = {}
    for site, count in list(counts.items()):
        row = grouped.get(site.where)
        if row is None:
            row = grouped[site.where] = {**site.to_dict(), "count": 0}
        row["count"] += count
    return sorted(grouped.values(), key=lambda r: (-r["count"], r["site"]))[:limit]


def _summary(entry: _Entry, now: float, records: list[_Record]) -> dict[str, Any]:
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
        "sites": _group(records, now) if entry.weak else _group_counts(entry.fallback_sites),
        "collected_sites": _group_counts(entry.collected_sites),
    }


def live_objects() -> dict[str, dict[str, Any]]:
    """Per tracked type: live, unreleased, released, collected-without-release and created
    counts, ``max_live``, the age of the oldest live instance and the top creation sites
    (``site``, ``file``, ``line``, ``function``, ``stack``, ``count``, ``unreleased``,
    ``oldest_age``), most unreleased first. JSON-ready.
    """
    now = time.monotonic()
    by_entry: dict[int, list[_Record]] = {}
    for rec in list(_records.values()):  # one pass over the records, not one per type
        by_entry.setdefault(id(rec.entry), []).append(rec)
    return {
        name: _summary(entry, now, by_entry.get(id(entry), []))
        for name, entry in sorted(list(_entries.items()))
    }


class Counts(NamedTuple):
    """The cheap figures of one tracked type, read on every sample."""

    live: int
    unreleased: int
    released: int
    collected_unreleased: int
    created: int
    max_live: int | None


def counts() -> dict[str, Counts]:
    """Per tracked type, its :class:`Counts` (no site grouping: cheap on every sample)."""
    return {
        name: Counts(
            e.live_count(),
            e.unreleased_count(),
            e.released,
            e.collected_unreleased,
            e.created,
            e.max_live,
        )
        for name, e in sorted(list(_entries.items()))
    }


def entry_summary(name: str) -> dict[str, Any] | None:
    """``live_objects()[name]`` for one type, or ``None`` when it is not tracked."""
    entry = _entries.get(name)
    return None if entry is None else _summary(entry, time.monotonic(), entry.records())
