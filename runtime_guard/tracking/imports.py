"""The import hook: patch a class right after its module is imported, whenever that is.

A tracked class is patched at once when its module is already imported, or right after the
module body runs when it is imported later. :class:`ImportWatcher` answers every other
import with one dict lookup and removes itself from ``sys.meta_path`` once nothing it waits
for is left.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = ["ImportWatcher", "resolve", "watcher"]


def resolve(module: ModuleType, attr: str) -> Any:
    """Return ``module.attr``, following dots in ``attr``; ``None`` when missing."""
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then the callbacks; everything else goes to the real loader."""

    def __init__(self, loader: Any, on_loaded: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._on_loaded = on_loaded

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps its real loader, so introspection (resources, inspect) after
        # the import sees exactly what it would have seen without the guard.
        try:
            module.__loader__ = self._loader
            if module.__spec__ is not None:
                module.__spec__.loader = self._loader
        except AttributeError:
            pass
        self._loader.exec_module(module)
        self._on_loaded(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class ImportWatcher(importlib.abc.MetaPathFinder):
    """Calls back when a watched module has been imported; other imports pass through."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[[ModuleType], None]]] = {}
        self._lock = threading.RLock()
        self._local = threading.local()

    def watch(self, module: str, callback: Callable[[ModuleType], None]) -> None:
        """Call ``callback(module)`` once ``module`` is imported (now, if it already is)."""
        loaded = sys.modules.get(module)
        if loaded is not None and getattr(loaded, "__spec__", None) is not None:
            initializing = getattr(loaded.__spec__, "_initializing", False)
            if not initializing:
                callback(loaded)
                return
        with self._lock:
            self._callbacks.setdefault(module, []).append(callback)
            if self not in sys.meta_path:
                sys.meta_path.insert(0, self)

    def watching(self) -> Sequence[str]:
        """Modules still waited for."""
        return sorted(self._callbacks)

    def clear(self) -> None:
        """Forget every callback and leave ``sys.meta_path`` as it was."""
        with self._lock:
            self._callbacks.clear()
            self._detach()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it at the fork)."""
        self._lock = threading.RLock()

    def _detach(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._callbacks:
            return None
        if getattr(self._local, "busy", False):
            return None
        self._local.busy = True
        try:
            spec = self._real_spec(fullname, path, target)
        finally:
            self._local.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, self._loaded)
        return spec

    def _real_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None
    ) -> importlib.machinery.ModuleSpec | None:
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                return spec  # type: ignore[no-any-return]
        return None

    def _loaded(self, module: ModuleType) -> None:
        with self._lock:
            callbacks = self._callbacks.pop(module.__name__, [])
            if not self._callbacks:
                self._detach()
        for callback in callbacks:
            callback(module)


watcher = ImportWatcher()
"""The default tracking registry's watcher (known clients and ``track("dotted.name")``)."""
