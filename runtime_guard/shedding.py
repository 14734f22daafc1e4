"""Shedding: optional features and caches switched off under pressure, back on after.

The registries are process-wide and work before any guard exists: features are declared at
import time, the guard is installed later. Without a guard nothing is ever shed. With
several guards alive (tests), the installed one governs, else the newest.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from runtime_guard import signals
from runtime_guard._component import Component
from runtime_guard.limiter import all_limiters, apply_pressure
from runtime_guard.pressure import Pressure

if TYPE_CHECKING:
    from runtime_guard.guard import Guard
    from runtime_guard.sample import Sample

__all__ = [
    "Feature",
    "SheddingComponent",
    "enabled",
    "feature",
    "register_cache",
    "set_emergency",
    "sheddable",
]

_log = logging.getLogger("runtime_guard")

F = TypeVar("F", bound=Callable[..., Any])

# Names of the features shed now. Only membership is read on the hot path; it is changed
# (under ``_lock``) by the sampler thread and ``set_emergency``, and set add/discard are
# atomic under the GIL, so readers need no lock.
_shed: set[str] = set()

FLAP_WINDOW = 60.0
"""A feature shed again within this many seconds of its restore is flapping."""
FIRST_HOLD = 10.0
"""Seconds a flapping feature stays shed after pressure allows it back; doubles per flap."""
MAX_HOLD = 300.0
"""The longest a flapping feature is held shed beyond what pressure asks."""


def enabled(name: str) -> bool:
    """Whether feature ``name`` is on: a set lookup, no lock, no allocation.

    An undeclared name is enabled, so checks can ship before the declaration does.
    """
    return name not in _shed


class Feature:
    """An optional capability that is switched off at ``shed_at`` and back on below it."""

    def __init__(
        self,
        name: str,
        shed_at: Pressure,
        on_shed: Callable[[], Any] | None,
        on_restore: Callable[[], Any] | None,
    ) -> None:
        self.name = name
        """The name checked with :func:`enabled`."""
        self.shed_at = shed_at
        """The level from which it is shed."""
        self.on_shed = on_shed
        """Called (no arguments) right after it is switched off."""
        self.on_restore = on_restore
        """Called (no arguments) right after it is switched back on."""
        self.shed_count = 0
        """How many times it was shed."""
        self.hold = 0.0
        """Seconds it stays shed after pressure allows it back: 0 until it flaps (restoring
        it pushed usage straight back up), then doubling per flap up to ``MAX_HOLD``."""
        self._restored_at: float | None = None
        self._hold_until = 0.0

    @property
    def enabled(self) -> bool:
        """Whether it is on now."""
        return self.name not in _shed

    def __repr__(self) -> str:
        state = "on" if self.enabled else "shed"
        return f"<Feature {self.name!r} {state} shed_at={self.shed_at.name}>"


class _Cache:
    """A registered cache: held weakly when the object allows it, so registering never
    keeps a per-instance cache alive; plain dicts and lists cannot be, so they are strong."""

    def __init__(self, obj: Any, name: str, shed_at: Pressure) -> None:
        self.name = name
        self.shed_at = shed_at
        try:
            self._ref: Callable[[], Any] = weakref.ref(obj)
        except TypeError:
            self._ref = lambda: obj
        self.cleared = 0
        self.last: dict[str, Any] | None = None

    def get(self) -> Any:
        return self._ref()

    def clear(self, level: Pressure) -> dict[str, Any] | None:
        obj = self._ref()
        if obj is None:
            return None
        entries = _entries(obj)
        blocks = sys.getallocatedblocks()
        clear = getattr(obj, "cache_clear", None) or obj.clear
        clear()
        self.cleared += 1
        self.last = {
            "level": level.name.lower(),
            "entries": entries,
            "freed_blocks": max(blocks - sys.getallocatedblocks(), 0),
        }
        return self.last

    def health(self) -> dict[str, Any]:
        obj = self._ref()
        return {
            "shed_at": self.shed_at.name.lower(),
            "entries": None if obj is None else _entries(obj),
            "cleared": self.cleared,
            "last_cleared": self.last,
        }


def _entries(obj: Any) -> int | None:
    info = getattr(obj, "cache_info", None)
    try:
        if info is not None:
            return int(info().currsize)
        return len(obj)
    except Exception:
        return None


_features: dict[str, Feature] = {}
_caches: dict[str, _Cache] = {}
# Re-entrant: an on_shed callback may declare a feature or register a cache.
_lock = threading.RLock()
_live: list[SheddingComponent] = []
_applied_by: SheddingComponent | None = None
_failed_callbacks: set[tuple[str, str]] = set()


def _level(value: Any) -> Pressure:
    try:
        level = Pressure.parse(value)
    except ValueError as exc:
        raise ValueError(f"shed_at: {exc}") from None
    if level == Pressure.OK:
        raise ValueError("shed_at must be 'elevated', 'high' or 'critical', not 'ok'")
    return level


def _governor() -> SheddingComponent | None:
    from runtime_guard.guard import get_guard

    guard = get_guard()
    installed = guard.component("shedding") if guard is not None else None
    if isinstance(installed, SheddingComponent) and installed in _live:
        return installed
    return _live[-1] if _live else None


def feature(
    name: str,
    shed_at: Pressure | str = "high",
    on_shed: Callable[[], Any] | None = None,
    on_restore: Callable[[], Any] | None = None,
) -> Feature:
    """Declare an optional feature, shed from ``shed_at`` up; returns its :class:`Feature`.

    Declaring a name again returns the same feature with the new level and any callbacks
    given (so module reloads and several ``sheddable`` functions can share one name).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"feature name must be a non-empty string, got {name!r}")
    level = _level(shed_at)
    with _lock:
        existing = _features.get(name)
        if existing is None:
            existing = _features[name] = Feature(name, level, on_shed, on_restore)
        else:
            existing.shed_at = level
            existing.on_shed = on_shed or existing.on_shed
            existing.on_restore = on_restore or existing.on_restore
        governor = _governor()
        if governor is not None and _applied_by is governor:
            governor._settle(existing)
        return existing


def sheddable(
    name: str, shed_at: Pressure | str | None = None, fallback: Any = None
) -> Callable[[F], F]:
    """Decorate a sync or async function that is skipped while feature ``name`` is shed.

    While shed, a call returns ``fallback``; a callable ``fallback`` is called with the
    call's arguments instead (and awaited if it returns an awaitable in an async function).
    ``shed_at`` defaults to ``"high"``, or to the level of an already declared feature.
    """
    with _lock:
        if shed_at is not None or name not in _features:
            feature(name, "high" if shed_at is None else shed_at)

    def fall_back(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return fallback(*args, **kwargs) if callable(fallback) else fallback

    def decorate(function: F) -> F:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if name in _shed:
                    result = fall_back(args, kwargs)
                    return await result if inspect.isawaitable(result) else result
                return await function(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name in _shed:
                return fall_back(args, kwargs)
            return function(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def register_cache(obj: Any, shed_at: Pressure | str = "high", name: str | None = None) -> Any:
    """Clear ``obj`` (``cache_clear()`` or ``clear()``) when pressure reaches ``shed_at``.

    Accepts dicts, ``functools.lru_cache`` functions, cachetools caches, anything with
    either method. Returns ``obj``, so it can wrap a cache where it is created. The
    registry keeps objects that support weak references only weakly.
    """
    if not callable(getattr(obj, "cache_clear", None)) and not callable(
        getattr(obj, "clear", None)
    ):
        raise TypeError(
            f"register_cache needs an object with clear() or cache_clear(), got {obj!r}"
        )
    level = _level(shed_at)
    if name is None:
        name = getattr(obj, "__qualname__", None) or f"{type(obj).__name__}@{id(obj):x}"
    with _lock:
        _caches[name] = _Cache(obj, name, level)
    return obj


def set_emergency(guard: Guard, on: bool) -> None:
    """Shed (``on``) or restore everything sheddable at once; used by ``Guard.set_emergency``."""
    component = guard.component("shedding")
    if not isinstance(component, SheddingComponent):
        component = SheddingComponent()
        guard.add_component(component)
    with _lock:
        if component.emergency == on:
            return
        component.emergency = on
        _log.warning(
            "runtime_guard: emergency mode %s: %s",
            "on" if on else "off",
            "every sheddable feature is shed" if on else "features follow pressure again",
        )
        if _governor() is component:
            component._apply(guard, component.level)


def _call(callback: Callable[[], Any] | None, feature_name: str, hook: str) -> None:
    if callback is None:
        return
    try:
        callback()
    except Exception:
        key = (feature_name, hook)
        if key not in _failed_callbacks:
            _failed_callbacks.add(key)
            _log.exception(
                "runtime_guard: %s of feature %r raised (logged once)", hook, feature_name
            )


class SheddingComponent(Component):
    """Sheds and restores features, clears caches, resizes limiters."""

    name = "shedding"

    def __init__(
        self,
        emergency: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emergency = emergency
        """Whether everything sheddable is shed regardless of pressure."""
        self.clock = clock
        """Time source for the flapping holds (injectable for tests)."""
        self.level = Pressure.OK
        """The level shedding last acted on."""
        self._guard: Guard | None = None
        self._held = False
        self._applied_emergency = False
        with _lock:
            _live.append(self)

    # -- driven by the sampler --------------------------------------------------------

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        level = sample.pressure
        with _lock:
            if _governor() is not self:
                return
            if _applied_by is not self or level != self.level or self._held:
                self._apply(guard, level)

    def _apply(self, guard: Guard, level: Pressure) -> None:
        """Bring features, caches and limiters in line with ``level`` (under ``_lock``)."""
        global _applied_by
        mine = _applied_by is self
        old = self.level if mine else Pressure.OK
        newly_emergency = self.emergency and not (mine and self._applied_emergency)
        self._guard, self.level = guard, level
        self._held = False
        _applied_by = self
        self._applied_emergency = self.emergency
        # Lower levels' features go first and come back last, like nested scopes.
        ordered = sorted(_features.values(), key=lambda f: f.shed_at)
        for item in ordered:
            self._settle(item, restore=False)
        for item in reversed(ordered):
            self._settle(item, shed=False)
        cleared = self._clear_caches(old, level, newly_emergency)
        apply_pressure(level, self.emergency)
        if cleared:
            _log.warning("runtime_guard: pressure %s: cleared caches %s", level.name, cleared)

    def _settle(self, item: Feature, shed: bool = True, restore: bool = True) -> None:
        """Shed or restore ``item`` as the level and emergency mode say (under ``_lock``)."""
        guard = self._guard
        if guard is None:
            return
        want_shed = self.emergency or self.level >= item.shed_at
        if shed and want_shed and item.name not in _shed:
            now = self.clock()
            # A feature whose own footprint pushes usage back over its level would be shed
            # and restored on every other sample; hold it back longer each time it does.
            flapped = item._restored_at is not None and now - item._restored_at < FLAP_WINDOW
            item.hold = min(max(item.hold * 2, FIRST_HOLD), MAX_HOLD) if flapped else 0.0
            item._hold_until = now + item.hold
            _shed.add(item.name)
            item.shed_count += 1
            _log.warning("runtime_guard: feature %r shed at %s", item.name, self.level.name)
            _call(item.on_shed, item.name, "on_shed")
            guard.send(signals.feature_shed, feature=item, level=self.level)
        elif restore and not want_shed and item.name in _shed:
            now = self.clock()
            if now < item._hold_until:
                self._held = True
                return
            item._restored_at = now
            _shed.discard(item.name)
            _log.warning("runtime_guard: feature %r restored at %s", item.name, self.level.name)
            _call(item.on_restore, item.name, "on_restore")
            guard.send(signals.feature_restored, feature=item, level=self.level)

    def _clear_caches(self, old: Pressure, new: Pressure, everything: bool) -> list[str]:
        described = []
        for cache in list(_caches.values()):
            if cache.get() is None:
                del _caches[cache.name]
            elif everything or old < cache.shed_at <= new:
                result = cache.clear(new)
                if result is not None:
                    described.append(
                        f"{cache.name} ({result['entries']} entries, "
                        f"{result['freed_blocks']:,} heap blocks)"
                    )
        return described

    # -- reporting and lifecycle ------------------------------------------------------

    def health(self, guard: Guard) -> dict[str, Any]:
        with _lock:
            caches = {name: cache.health() for name, cache in _caches.items()}
        return {
            "shed_features": sorted(_shed),
            "emergency": self.emergency,
            "caches": caches,
            "limiters": {item.name: item.health() for item in all_limiters()},
        }

    def close(self, guard: Guard) -> None:
        global _applied_by
        with _lock:
            if self in _live:
                _live.remove(self)
            if _applied_by is not self:
                return
            _applied_by = None
            # The guard's signals are stopped by now: restore quietly, callbacks only.
            for item in sorted(_features.values(), key=lambda f: f.shed_at, reverse=True):
                if item.name in _shed:
                    _shed.discard(item.name)
                    _call(item.on_restore, item.name, "on_restore")
            _shed.clear()
            apply_pressure(Pressure.OK, False)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
