"""Where a thread or an asyncio task is right now, as ``file:line in function`` lines.

For reports that must name the line a piece of work is stuck on: a thread's current frame
from ``sys._current_frames()``, a suspended task's chain of awaits (each coroutine it is
waiting in, down to the innermost), and a task that is running now through its loop's
thread. Read from the sampler's thread, on demand only: nothing here is on a hot path.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import FrameType
from typing import Any

from runtime_guard.tracking.sites import format_frame

__all__ = ["MAX_FRAMES", "format_frames", "stack_of", "task_stack", "thread_stack"]

MAX_FRAMES = 20
"""Frames kept per stack, the innermost ones."""


def format_frames(frames: Iterable[FrameType], limit: int = MAX_FRAMES) -> list[str]:
    """``file:line in function`` per frame, in the order given, the last ``limit`` kept."""
    lines = [format_frame(f.f_code.co_filename, f.f_lineno or 0, f.f_code.co_name) for f in frames]
    return lines[-limit:]


def _outwards(frame: FrameType | None) -> list[FrameType]:
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    return frames


def stack_of(frame: FrameType | None, limit: int = MAX_FRAMES) -> list[str]:
    """The stack that ends in ``frame``, outermost first, innermost last."""
    return format_frames(_outwards(frame), limit)


def thread_stack(ident: int | None, limit: int = MAX_FRAMES) -> list[str]:
    """The stack of thread ``ident`` now, outermost first, innermost last; ``[]`` when the
    thread has ended."""
    if ident is None:
        return []
    return stack_of(sys._current_frames().get(ident), limit)


def _await_chain(coro: Any) -> list[FrameType]:
    frames: list[FrameType] = []
    seen = 0
    while coro is not None and seen < 100:  # a chain of awaits is never that deep
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        seen += 1
    return frames


def task_stack(task: Any, loop_thread: int | None = None, limit: int = MAX_FRAMES) -> list[str]:
    """Where ``task`` is: its loop thread's stack while it runs (``loop_thread`` given and the
    task is its loop's current one), else the chain of awaits it is suspended in, outermost
    first. Falls back to ``Task.get_stack()``."""
    try:
        asyncio_tasks = sys.modules.get("asyncio.tasks")
        current = getattr(asyncio_tasks, "_current_tasks", {})
        if loop_thread is not None and current.get(task.get_loop()) is task:
            return thread_stack(loop_thread, limit)
        frames = _await_chain(task.get_coro())
        if not frames:
            frames = list(task.get_stack())
        return format_frames(frames, limit)
    except Exception:  # a task of another implementation, finished meanwhile...
        return []
