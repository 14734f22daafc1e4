"""Settling the heap between runs: caches that are not leaks cleared, cycles collected."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["clear_caches", "settle"]


# Attribute paths split once: the type attribute cache keeps the name strings it was looked
# up with until the next _clear_type_cache(), so names split afresh each settling were
# freed a round later, tens of bytes of noise in a zero-tolerance check (measured).
_CACHES = tuple(
    (module_name, tuple(path.split(".")))
    for module_name, path in (
        ("re", "purge"),
        ("linecache", "clearcache"),
        ("struct", "_clearcache"),
        ("urllib.parse", "clear_cache"),
        ("fnmatch", "_compile_pattern.cache_clear"),
        ("tokenize", "_compile.cache_clear"),
        ("inspect", "_filesbymodname.clear"),
        ("inspect", "modulesbyfile.clear"),
        ("filecmp", "_cache.clear"),
        ("importlib.metadata", "FastPath.__new__.cache_clear"),
    )
)


def _cache_clearers() -> Iterator[Callable[[], object]]:
    """Clear functions of interpreter and stdlib caches that fill on use and are not leaks.

    Only modules already imported are touched (importing one to clear it would itself
    allocate). The list follows CPython's own refleak hunter (``Lib/test/libregrtest``).
    """
    modules = sys.modules
    yield sys._clear_type_cache
    for module_name, path in _CACHES:
        target: Any = modules.get(module_name)
        for part in path:
            target = getattr(target, part, None)
        if callable(target) and not isinstance(target, type):
            yield target
    typing = modules.get("typing")
    yield from getattr(typing, "_cleanups", ())
    # ABC caches are left alone, unlike in CPython's hunt: they hold weak references that
    # die with their classes, and clearing them makes every round re-allocate them.


def _clear_pytest_log_capture() -> None:
    # pytest keeps every log record of the call phase (for caplog and the report); records
    # of earlier runs would look like growth, and a body asserting on caplog.records should
    # see its own run's records only.
    capture = sys.modules.get("_pytest.logging")
    handler_type = getattr(capture, "LogCaptureHandler", None)
    if handler_type is None:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, handler_type):
            handler.clear()


def clear_caches() -> None:
    """Empty the interpreter and stdlib caches that fill on use and are not leaks."""
    for clear in _cache_clearers():
        # A cache that cannot be cleared is measured as it is.
        with contextlib.suppress(Exception):
            clear()
    _clear_pytest_log_capture()


def settle() -> None:
    """Bring the heap to its floor: clear caches that are not leaks, then collect fully.

    A full collection also empties the interpreter's free lists (floats, tuples, dicts),
    whose blocks would otherwise still count as allocated. While the baseline heap is frozen
    (``gc.freeze()``) the collection walks only what was allocated since.
    """
    clear_caches()
    gc.collect()
    # Finalizers run by that collection may have left new cycles; they are young.
    gc.collect(0)
