"""Coverage measurement set aside while a leak check's rounds run.

coverage.py's C tracer keeps state per traced thread and per traced frame of the code it
measures: under ``pytest --cov`` a clean body read as a few blocks kept per call, and a
body that starts a thread as a whole tracer kept per call (coverage starts one for every
new thread and keeps it). The rounds run with coverage's tracer off on this thread and
for new threads; the warm-up calls run under it, so the body's lines are still measured.
Other tracers (a debugger's) are left alone.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["set_aside"]


def _is_coverage(trace: Any) -> bool:
    # The C tracer is an object whose type lives in ``coverage.tracer``; the Python
    # tracer and the hook for new threads are bound methods of coverage's classes.
    owner = getattr(trace, "__self__", trace)
    return type(owner).__module__.split(".")[0] == "coverage"


def set_aside() -> Callable[[], None]:
    """Stop coverage's tracing of this thread and of new threads; the call puts it back."""
    trace = sys.gettrace()
    hook = threading.gettrace()
    mine = trace is not None and _is_coverage(trace)
    theirs = hook is not None and _is_coverage(hook)
    if not mine and not theirs:
        return _nothing
    if mine:
        sys.settrace(None)
    if theirs:
        threading.settrace(None)

    def restore() -> None:
        if mine and sys.gettrace() is None:
            sys.settrace(trace)
        if theirs and threading.gettrace() is None:
            threading.settrace(hook)

    return restore


def _nothing() -> None:
    pass
