"""The hot path: the wrappers put on a tracked class, and putting them on and off exactly.

A tracked class's ``__init__`` is wrapped so that each new instance gets a weak reference
(a :class:`~runtime_guard.tracking.records.Record`) carrying its creation time and site;
its release methods (``close``/``aclose``/``dispose``...) are wrapped to mark it released.
Every wrapper binds what it uses as closure cells when it is made: the construction wrapper
runs on every construction of a tracked class (measured in ``benchmarks/bench_tracking.py``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime_guard.tracking import sites as _sites
from runtime_guard.tracking.imports import resolve
from runtime_guard.tracking.records import (
    BORROWED,
    MAX_COLLECTED_SITES,
    RELEASED,
    Entry,
    Record,
    RecordStore,
    borrow,
    release,
)

if TYPE_CHECKING:
    from runtime_guard.tracking.clients import ClientSpec

__all__ = ["Patch", "patch_class", "replace", "restore", "unpatch"]

_log = logging.getLogger("runtime_guard")


@dataclass
class Patch:
    """One attribute replaced on a class, and what to put back."""

    owner: type
    attr: str
    had: bool
    original: Any


# -- construction ------------------------------------------------------------------------


def _init_wrapper(
    store: RecordStore,
    entry: Entry,
    original: Callable[..., None],
    owns: Callable[[Any], bool] | None,
) -> Callable[..., None]:
    records = store.records
    capture = _sites.capture
    monotonic = time.monotonic
    on_collect = store.on_collect
    new_record = Record
    forget = store.forget

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
            forget(rec)
            raise
        if owns is not None and not _safe(owns, self):
            borrow(rec, True)

    return __init__


def _counting_init_wrapper(entry: Entry, original: Callable[..., None]) -> Callable[..., None]:
    # Instances that cannot be weak-referenced are counted (created minus released) and
    # attributed, but their collection cannot be seen.
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        entry.created += 1
        site = _sites.capture(1)
        sites = entry.fallback_sites
        if site in sites or len(sites) < MAX_COLLECTED_SITES:
            sites[site] = sites.get(site, 0) + 1
        return original(self, *args, **kwargs)

    return __init__


def _factory_wrapper(
    store: RecordStore, func: Callable[..., Any], owns: Callable[[Any], bool]
) -> Callable[..., Any]:
    # ``Redis.from_url()`` decides whether the client owns its pool after ``__init__`` has
    # returned, so ownership is judged again once the factory returns.
    records = store.records

    @functools.wraps(func)
    def factory(cls: type, *args: Any, **kwargs: Any) -> Any:
        made = func(cls, *args, **kwargs)
        rec = records.get(id(made))
        if rec is not None and rec.state == BORROWED:
            borrow(rec, not _safe(owns, made))
        return made

    return factory


def _safe(predicate: Callable[[Any], bool], obj: Any) -> bool:
    try:
        return bool(predicate(obj))
    except Exception:
        return True


def _inherited_init(cls: type) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        super(cls, self).__init__(*args, **kwargs)  # type: ignore[arg-type]

    parent = next(
        (k.__dict__["__init__"] for k in cls.__mro__[1:] if "__init__" in k.__dict__), None
    )
    if inspect.isfunction(parent):
        functools.update_wrapper(__init__, parent)
    return __init__


# -- release -----------------------------------------------------------------------------


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
    store: RecordStore, mark: Callable[[Any], None], original: Callable[..., Any]
) -> Callable[..., Any]:
    """Wrap a release method so that ``mark(self)`` runs first; async stays async.

    ``mark`` runs in the frame right below the wrapper: ``_in_finalizer`` counts on it.
    """
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def arelease(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                mark(self)
            except Exception:  # the host's close() must close whatever the counting does
                store.warn_once(
                    "release", "runtime_guard: counting a release failed", exc_info=True
                )
            return await original(self, *args, **kwargs)

        return arelease

    @functools.wraps(original)
    def srelease(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            mark(self)
        except Exception:  # the host's close() must close whatever the counting does
            store.warn_once("release", "runtime_guard: counting a release failed", exc_info=True)
        return original(self, *args, **kwargs)

    return srelease


def _release_wrapper(
    store: RecordStore, entry: Entry, original: Callable[..., Any]
) -> Callable[..., Any]:
    records = store.records

    def mark(self: Any) -> None:
        if not entry.weak:
            entry.released += 1
            return
        rec = records.get(id(self))
        if rec is not None and rec.state != RELEASED and not _in_finalizer(1):
            release(rec)

    return _calling_first(store, mark, original)


def _companion_wrapper(
    store: RecordStore, entry: Entry, original: Callable[..., Any], link: str
) -> Callable[..., Any]:
    def mark(resource: Any) -> None:
        if _in_finalizer(6):
            return
        for rec in store.of(entry):
            obj = rec()
            if obj is not None and rec.state != RELEASED and getattr(obj, link, None) is resource:
                release(rec)

    return _calling_first(store, mark, original)


# -- putting the wrappers on and off -------------------------------------------------------


def replace(patches: list[Patch], owner: type, attr: str, replacement: Any) -> None:
    """Set ``owner.attr`` to ``replacement``, remembering in ``patches`` what to put back."""
    had = attr in owner.__dict__
    original = owner.__dict__.get(attr)
    setattr(owner, attr, replacement)
    patches.append(Patch(owner, attr, had, original))


def restore(patches: list[Patch]) -> None:
    """Put back everything :func:`replace` changed, newest first, and empty ``patches``."""
    for patch in reversed(patches):
        try:
            if patch.had:
                setattr(patch.owner, patch.attr, patch.original)
            else:
                delattr(patch.owner, patch.attr)
        except (AttributeError, TypeError):
            _log.warning(
                "runtime_guard: could not restore %s.%s", patch.owner.__qualname__, patch.attr
            )
    patches.clear()


def _patch(entry: Entry, owner: type, attr: str, replacement: Any) -> None:
    replace(entry.patches, owner, attr, replacement)


def unpatch(entry: Entry) -> None:
    """Put back everything :func:`patch_class` replaced for ``entry``, newest first."""
    restore(entry.patches)


def patch_class(
    store: RecordStore,
    entry: Entry,
    release_methods: tuple[str, ...],
    spec: ClientSpec | None,
) -> None:
    """Wrap ``entry.cls``'s ``__init__``, its release methods (those of ``release_methods``
    it has), the factories and companions of a known client's ``spec``.

    Sets ``entry.release`` to the methods wrapped. Raises ``TypeError`` or
    ``AttributeError`` when the class cannot be patched, with every patch undone.
    """
    cls = entry.cls
    original = cls.__dict__.get("__init__")
    if not (inspect.isfunction(original) or original is None):
        original = None
    try:
        init = original if original is not None else _inherited_init(cls)
        _patch_all(store, entry, init, release_methods, spec)
    except (TypeError, AttributeError):
        unpatch(entry)
        raise


def _patch_all(
    store: RecordStore,
    entry: Entry,
    init: Callable[..., None],
    release_methods: tuple[str, ...],
    spec: ClientSpec | None,
) -> None:
    cls = entry.cls
    owns = None if spec is None else spec.owns
    if entry.weak:
        _patch(entry, cls, "__init__", _init_wrapper(store, entry, init, owns))
    else:
        _patch(entry, cls, "__init__", _counting_init_wrapper(entry, init))
    if spec is not None and owns is not None:
        for factory in spec.factories:
            raw = cls.__dict__.get(factory)
            if isinstance(raw, classmethod) and inspect.isfunction(raw.__func__):
                _patch(
                    entry, cls, factory, classmethod(_factory_wrapper(store, raw.__func__, owns))
                )
    patched = []
    for method in release_methods:
        found = inspect.getattr_static(cls, method, None)
        if inspect.isfunction(found):
            _patch(entry, cls, method, _release_wrapper(store, entry, found))
            patched.append(method)
    entry.release = tuple(patched)
    for companion in () if spec is None else spec.companions:
        module = sys.modules.get(companion.module)
        owner = None if module is None else resolve(module, companion.attr)
        if not isinstance(owner, type):
            continue
        for method in companion.methods:
            found = inspect.getattr_static(owner, method, None)
            if inspect.isfunction(found):
                _patch(
                    entry, owner, method, _companion_wrapper(store, entry, found, companion.link)
                )
