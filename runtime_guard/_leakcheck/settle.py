"""Settling the heap between runs: caches that are not leaks cleared, cycles collected."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["FixtureRecords", "RecordedWarnings", "clear_caches", "settle"]


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


class RecordedWarnings:
    """The warnings list of the innermost ``catch_warnings(record=True)`` around the check.

    pytest records every warning a test raises (``catch_warnings_for_item``), and a
    deprecation warning raised by each run is recorded again by each run: the list grows
    with the runs the check adds. :meth:`drop_repeats` keeps the first of each warning
    recorded since the check began (same category, text and line), as a single run of the
    test would have recorded it.
    """

    def __init__(self) -> None:
        append = getattr(warnings, "_showwarnmsg_impl", None)
        log = getattr(append, "__self__", None)
        self._log: list[Any] | None = log if isinstance(log, list) else None
        self._start = len(self._log) if self._log is not None else 0

    def drop_repeats(self) -> None:
        log = self._log
        if log is None or len(log) - self._start < 2:
            return
        seen: set[tuple[object, ...]] = set()
        kept = []
        for entry in log[self._start :]:
            key: tuple[object, ...]
            try:
                key = (entry.category, str(entry.message), entry.filename, entry.lineno)
            except Exception:  # not a WarningMessage: keep it as it is
                key = (id(entry),)
            if key not in seen:
                seen.add(key)
                kept.append(entry)
        if len(kept) < len(log) - self._start:
            log[self._start :] = kept


class FixtureRecords:
    """What the test's fixtures record per call, kept as one run of the test would leave it.

    ``monkeypatch`` records each ``setattr``/``setenv``/``setitem`` to undo it at teardown:
    a body that patches the same attribute on every call grows that record by one entry
    a call. Only the first entry per patched name is needed to undo them all (it holds
    the original value), so the repeats are dropped. A ``unittest.mock`` object a fixture
    provides records every call made to it (``mock_calls``): it is reset after each run of
    the body, its return values and side effects kept, so each run sees its own calls.
    Both are done after each run of the body.
    """

    def __init__(self, namespaces: list[object]) -> None:
        self._patches: list[Any] = []
        self._mocks: list[Any] = []
        mock = sys.modules.get("unittest.mock")
        mock_type = getattr(mock, "NonCallableMock", None)
        for namespace in namespaces:
            values = namespace.values() if isinstance(namespace, dict) else ()
            for value in values:
                cls = type(value)
                if cls.__name__ == "MonkeyPatch" and cls.__module__ == "_pytest.monkeypatch":
                    self._patches.append(value)
                elif mock_type is not None and isinstance(value, mock_type):
                    self._mocks.append(value)

    def settle(self) -> None:
        for patch in self._patches:
            for name in ("_setattr", "_setitem"):
                entries = getattr(patch, name, None)
                if isinstance(entries, list) and len(entries) > 1:
                    _keep_first(entries)
        for mock in self._mocks:
            with contextlib.suppress(Exception):
                mock.reset_mock()


def _keep_first(entries: list[Any]) -> None:
    """Drop the entries that patch again what an earlier entry patched."""
    seen: set[tuple[int, object]] = set()
    kept = []
    for entry in entries:
        try:
            key = (id(entry[0]), entry[1])
            hash(key)
        except Exception:  # not the (target, name, value) monkeypatch keeps: leave it
            return
        if key not in seen:
            seen.add(key)
            kept.append(entry)
    if len(kept) < len(entries):
        entries[:] = kept
