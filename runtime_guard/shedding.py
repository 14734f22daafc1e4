"""Shedding: optional features and caches switched off under pressure, back on after.

Features and caches are declared in a :class:`SheddingRegistry`, at import time, before any
guard exists; :func:`feature`, :func:`sheddable` and :func:`register_cache` declare into
:data:`default_registry`, which the installed guard's shedding component drives. Without a
guard nothing is ever shed.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from runtime_guard import _fork, signals
from runtime_guard._component import Component
from runtime_guard.limiters import LimiterRegistry
from runtime_guard.limiters import default_registry as default_limiters
from runtime_guard.pressure import Pressure, parse_level

if TYPE_CHECKING:
    from runtime_guard.guard import Clock, Guard
    from runtime_guard.sample import Sample

__all__ = [
    "Feature",
    "SheddingRegistry",
    "default_registry",
    "enabled",
    "feature",
    "register_cache",
    "sheddable",
]

_log = logging.getLogger("runtime_guard")

F = TypeVar("F", bound=Callable[..., Any])

FLAP_WINDOW = 60.0
"""A feature shed again within this many seconds of its restore is flapping."""
FIRST_HOLD = 10.0
"""Seconds a flapping feature stays shed after pressure allows it back; doubles per flap."""
MAX_HOLD = 300.0
"""The longest a flapping feature is held shed beyond what pressure asks."""


class Feature:
    """An optional capability that is switched off at ``shed_at`` and back on below it."""

    def __init__(
        self,
        name: str,
        shed_at: Pressure,
        on_shed: Callable[[], Any] | None,
        on_restore: Callable[[], Any] | None,
        registry: SheddingRegistry | None = None,
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
        self._shed = (registry or default_registry).shed
        self._restored_at: float | None = None
        self._hold_until = 0.0

    @property
    def enabled(self) -> bool:
        """Whether it is on now."""
        return self.name not in self._shed

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


class SheddingRegistry:
    """Declared features and caches, and which features are shed now.

    The process has one, :data:`default_registry`; the installed guard's shedding drives it.
    A test can give a guard its own (``SheddingComponent(registry=...)``).
    """

    def __init__(self) -> None:
        self.shed: set[str] = set()
        """Names of the features shed now. Only membership is read on the hot path; it is
        changed under :attr:`lock` by the sampler thread and ``set_emergency``, and set
        add/discard are atomic under the GIL, so readers need no lock."""
        self.features: dict[str, Feature] = {}
        self.caches: dict[str, _Cache] = {}
        # Re-entrant: an on_shed callback may declare a feature or register a cache.
        self.lock = threading.RLock()
        self.driver: SheddingComponent | None = None
        """The component whose level the features follow now (the last one that applied)."""
        self._failed_callbacks: set[tuple[str, str]] = set()

    def declare(
        self,
        name: str,
        shed_at: Pressure | str,
        on_shed: Callable[[], Any] | None,
        on_restore: Callable[[], Any] | None,
    ) -> Feature:
        """:func:`feature` on this registry."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"feature name must be a non-empty string, got {name!r}")
        level = parse_level(shed_at, "shed_at")
        with self.lock:
            existing = self.features.get(name)
            if existing is None:
                existing = self.features[name] = Feature(name, level, on_shed, on_restore, self)
            else:
                existing.shed_at = level
                existing.on_shed = on_shed or existing.on_shed
                existing.on_restore = on_restore or existing.on_restore
            if self.driver is not None:
                self.driver._settle(existing)
            return existing

    def register_cache(self, obj: Any, shed_at: Pressure | str, name: str | None) -> None:
        """:func:`register_cache` on this registry."""
        if not callable(getattr(obj, "cache_clear", None)) and not callable(
            getattr(obj, "clear", None)
        ):
            raise TypeError(
                f"register_cache needs an object with clear() or cache_clear(), got {obj!r}"
            )
        level = parse_level(shed_at, "shed_at")
        if name is None:
            name = getattr(obj, "__qualname__", None) or f"{type(obj).__name__}@{id(obj):x}"
        with self.lock:
            self.caches[name] = _Cache(obj, name, level)

    def call(self, callback: Callable[[], Any] | None, feature_name: str, hook: str) -> None:
        """Run a feature's callback; a raising one is logged once and never propagates."""
        if callback is None:
            return
        try:
            callback()
        except Exception:
            key = (feature_name, hook)
            if key not in self._failed_callbacks:
                self._failed_callbacks.add(key)
                _log.exception(
                    "runtime_guard: %s of feature %r raised (logged once)", hook, feature_name
                )

    def restore_all(self) -> None:
        """Switch every shed feature back on, quietly (callbacks only, no signals)."""
        with self.lock:
            for item in sorted(self.features.values(), key=lambda f: f.shed_at, reverse=True):
                if item.name in self.shed:
                    self.shed.discard(item.name)
                    self.call(item.on_restore, item.name, "on_restore")
            self.shed.clear()
            self.driver = None

    def clear(self) -> None:
        """Restore everything and forget every feature and cache (for tests)."""
        self.restore_all()
        with self.lock:
            self.features.clear()
            self.caches.clear()
            self._failed_callbacks.clear()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it at the fork)."""
        self.lock = threading.RLock()


default_registry = SheddingRegistry()
"""The registry :func:`feature`, :func:`sheddable` and :func:`register_cache` declare into."""
_fork.after_fork_in_child(default_registry.after_fork)

# The hot path reads this set directly: one global lookup and one ``in``.
_shed = default_registry.shed


def enabled(name: str) -> bool:
    """Whether feature ``name`` is on: a set lookup, no lock, no allocation.

    An undeclared name is enabled, so checks can ship before the declaration does.
    """
    return name not in _shed


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
    return default_registry.declare(name, shed_at, on_shed, on_restore)


def sheddable(
    name: str, shed_at: Pressure | str | None = None, fallback: Any = None
) -> Callable[[F], F]:
    """Decorate a sync or async function that is skipped while feature ``name`` is shed.

    While shed, a call returns ``fallback``; a callable ``fallback`` is called with the
    call's arguments instead (and awaited if it returns an awaitable in an async function).
    ``shed_at`` defaults to ``"high"``, or to the level of an already declared feature.
    """
    with default_registry.lock:
        if shed_at is not None or name not in default_registry.features:
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


C = TypeVar("C")


def register_cache(obj: C, shed_at: Pressure | str = "high", name: str | None = None) -> C:
    """Clear ``obj`` (``cache_clear()`` or ``clear()``) when pressure reaches ``shed_at``.

    Accepts dicts, ``functools.lru_cache`` functions, cachetools caches, anything with
    either method. Returns ``obj``, so it can wrap a cache where it is created. The
    registry keeps objects that support weak references only weakly.
    """
    default_registry.register_cache(obj, shed_at, name)
    return obj


class SheddingComponent(Component):
    """Sheds and restores features, clears caches, resizes limiters."""

    name = "shedding"

    def __init__(
        self,
        emergency: bool = False,
        clock: Clock | None = None,
        *,
        registry: SheddingRegistry | None = None,
        limiters: LimiterRegistry | None = None,
    ) -> None:
        self.emergency = emergency
        """Whether everything sheddable is shed regardless of pressure."""
        self.clock: Clock = clock or _monotonic
        """Time source for the flapping holds (the guard's clock)."""
        self.registry = registry or default_registry
        """The features and caches this component drives."""
        self.limiters = limiters or default_limiters
        """The limiters whose capacity follows the level."""
        self.level = Pressure.OK
        """The level shedding last acted on."""
        self._guard: Guard | None = None
        self._held = False
        self._applied_emergency = False

    # -- driven by the sampler --------------------------------------------------------

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        level = sample.pressure
        with self.registry.lock:
            if self.registry.driver is not self or level != self.level or self._held:
                self._apply(guard, level)

    def set_emergency(self, guard: Guard, on: bool) -> None:
        """Shed (``on``) or restore everything sheddable at once (``Guard.set_emergency``)."""
        with self.registry.lock:
            if self.emergency == on:
                return
            self.emergency = on
            _log.warning(
                "runtime_guard: emergency mode %s: %s",
                "on" if on else "off",
                "every sheddable feature is shed" if on else "features follow pressure again",
            )
            self._apply(guard, self.level)

    def _apply(self, guard: Guard, level: Pressure) -> None:
        """Bring features, caches and limiters in line with ``level`` (under the lock)."""
        registry = self.registry
        mine = registry.driver is self
        old = self.level if mine else Pressure.OK
        newly_emergency = self.emergency and not (mine and self._applied_emergency)
        self._guard, self.level = guard, level
        self._held = False
        registry.driver = self
        self._applied_emergency = self.emergency
        # Lower levels' features go first and come back last, like nested scopes.
        ordered = sorted(registry.features.values(), key=lambda f: f.shed_at)
        for item in ordered:
            self._settle(item, restore=False)
        for item in reversed(ordered):
            self._settle(item, shed=False)
        cleared = self._clear_caches(old, level, newly_emergency)
        self.limiters.apply_pressure(level, self.emergency)
        if cleared:
            _log.warning("runtime_guard: pressure %s: cleared caches %s", level.name, cleared)

    def _settle(self, item: Feature, shed: bool = True, restore: bool = True) -> None:
        """Shed or restore ``item`` as the level and emergency mode say (under the lock)."""
        guard = self._guard
        if guard is None:
            return
        registry = self.registry
        want_shed = self.emergency or self.level >= item.shed_at
        if shed and want_shed and item.name not in registry.shed:
            now = self.clock()
            # A feature whose own footprint pushes usage back over its level would be shed
            # and restored on every other sample; hold it back longer each time it does.
            flapped = item._restored_at is not None and now - item._restored_at < FLAP_WINDOW
            item.hold = min(max(item.hold * 2, FIRST_HOLD), MAX_HOLD) if flapped else 0.0
            item._hold_until = now + item.hold
            registry.shed.add(item.name)
            item.shed_count += 1
            registry.call(item.on_shed, item.name, "on_shed")
            guard.send(signals.feature_shed, feature=item, level=self.level)
        elif restore and not want_shed and item.name in registry.shed:
            now = self.clock()
            if now < item._hold_until:
                self._held = True
                return
            item._restored_at = now
            registry.shed.discard(item.name)
            registry.call(item.on_restore, item.name, "on_restore")
            guard.send(signals.feature_restored, feature=item, level=self.level)

    def _clear_caches(self, old: Pressure, new: Pressure, everything: bool) -> list[str]:
        described = []
        caches = self.registry.caches
        for cache in list(caches.values()):
            if cache.get() is None:
                del caches[cache.name]
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
        registry = self.registry
        with registry.lock:
            caches = {name: cache.health() for name, cache in registry.caches.items()}
            shed = sorted(registry.shed) if registry.driver is self else []
        return {
            "shed_features": shed,
            "emergency": self.emergency,
            "caches": caches,
            "limiters": {item.name: item.health() for item in self.limiters.all()},
        }

    def close(self, guard: Guard) -> None:
        registry = self.registry
        with registry.lock:
            if registry.driver is not self:
                return
            # The guard's signals are stopped by now: restore quietly, callbacks only.
            registry.restore_all()
            self.limiters.apply_pressure(Pressure.OK, False)


def _monotonic() -> float:
    return time.monotonic()
