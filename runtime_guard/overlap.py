"""``no_overlap``: a periodic job that outlasts its interval is skipped, not stacked; one
that outlives its ``deadline`` is reported with where it hangs (:mod:`runtime_guard.stuck`)."""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast, overload

from runtime_guard import signals, stuck

__all__ = ["no_overlap"]

_log = logging.getLogger("runtime_guard")

F = TypeVar("F", bound=Callable[..., Any])


def _skipped(task: str) -> None:
    from runtime_guard._current import get_guard

    _log.debug("runtime_guard: %s still running; this call is skipped", task)
    guard = get_guard()
    if guard is not None:
        guard.send(signals.overlap_skipped, task=task)
    else:
        # Without a guard there is no dispatcher thread: receivers run here, sender None.
        signals.emit(signals.overlap_skipped, None, task=task)


def _wrap(function: F, task: str, deadline: float | None) -> F:
    # A non-blocking acquire is all that is needed, and a threading.Lock serves threads
    # and tasks of any loop alike (it may be released by another thread or task). With a
    # deadline each run is noted with its thread (or task), so that one past the deadline
    # can be reported with its stack; without, a run costs one comparison more.
    running = threading.Lock()
    works = stuck.default_registry

    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not running.acquire(blocking=False):
                _skipped(task)
                return None
            token = 0 if deadline is None else works.begin(task, deadline, stuck.current_task())
            try:
                return await function(*args, **kwargs)
            finally:
                if token:
                    works.end(token)
                running.release()

        return cast(F, async_wrapper)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not running.acquire(blocking=False):
            _skipped(task)
            return None
        token = 0 if deadline is None else works.begin(task, deadline)
        try:
            return function(*args, **kwargs)
        finally:
            if token:
                works.end(token)
            running.release()

    return cast(F, wrapper)


@overload
def no_overlap(function: F, /) -> F: ...


@overload
def no_overlap(*, name: str | None = None, deadline: float | None = None) -> Callable[[F], F]: ...


def no_overlap(
    function: Any = None, /, *, name: str | None = None, deadline: float | None = None
) -> Any:
    """Skip a call (returning ``None``) while the previous call of the function still runs.

    Use as ``@no_overlap`` or ``@no_overlap(name="nightly-report", deadline=300)`` on sync
    or async functions. Each skip sends ``signals.overlap_skipped(task=name)``; ``name``
    defaults to the function's module and qualified name. One call at a time per decorated
    function (not per instance, for methods). With no guard installed the signal is sent
    at once on the caller's thread with sender ``None``.

    ``deadline`` (seconds): a run still going after it is reported once by the installed
    guard, ``signals.work_stuck(task=name, seconds=..., stack=...)`` with where it is now.
    """
    checked = stuck.check_deadline(deadline, "no_overlap")

    def decorate(target: F) -> F:
        task = name or f"{target.__module__}.{target.__qualname__}"
        return _wrap(target, task, checked)

    return decorate if function is None else decorate(function)
