"""Work that stopped moving: a run past its declared deadline, reported with where it is.

``no_overlap(deadline=...)``, ``limiter(..., deadline=...)`` and the Celery integration (a
task's time limit) put each run in a :class:`WorkRegistry` while it runs. On every sample
:class:`StuckComponent` looks for runs past their deadline and sends ``work_stuck`` once per
run, with the stack of the thread that runs it (``sys._current_frames()``) or, for an
asyncio task, the chain of awaits it is suspended in. Beginning and ending a run costs a
dict insert and delete; work without a deadline costs nothing.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime_guard import _fork, _stacks, signals
from runtime_guard._component import Component
from runtime_guard._units import format_duration
from runtime_guard.reports.files import write_report

if TYPE_CHECKING:
    from runtime_guard.guard import Guard
    from runtime_guard.sample import Sample

__all__ = ["Work", "WorkRegistry", "check_deadline", "default_registry"]

_log = logging.getLogger("runtime_guard")


def check_deadline(deadline: float | None, what: str) -> float | None:
    """Validate a ``deadline=`` argument: ``None`` or seconds greater than 0."""
    if deadline is None:
        return None
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0:
        raise ValueError(f"{what}: deadline must be seconds greater than 0, got {deadline!r}")
    return float(deadline)


class Work:
    """One run with a deadline: what, since when, and who runs it."""

    __slots__ = ("_task", "deadline", "ident", "name", "reported", "started")

    def __init__(
        self, name: str, deadline: float, started: float, ident: int, task: Any = None
    ) -> None:
        self.name = name
        """The work's name (the ``no_overlap`` function, ``limiter <name>``, a Celery task)."""
        self.deadline = deadline
        """Seconds it may run."""
        self.started = started
        """When it started, on the registry's clock."""
        self.ident = ident
        """The thread that runs it (for a task, its loop's thread)."""
        self.reported = False
        """Whether ``work_stuck`` was sent for this run."""
        self._task: Callable[[], Any] | None = None if task is None else weakref.ref(task)

    @property
    def task(self) -> Any:
        """The asyncio task that runs it, while alive (``None`` for a thread)."""
        return None if self._task is None else self._task()

    def stack(self) -> list[str]:
        """Where the run is now, outermost first, innermost last."""
        task = self.task
        if task is not None:
            return _stacks.task_stack(task, self.ident)
        return _stacks.thread_stack(self.ident)


class WorkRegistry:
    """The runs with a deadline in progress in this process.

    :data:`default_registry` is the one ``no_overlap``, limiters and the Celery integration
    use; the installed guard's :class:`StuckComponent` reads it.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock: Callable[[], float] = clock or time.monotonic
        """The clock runs are timed with (a test can move a hand-driven one)."""
        self.running: dict[int, Work] = {}
        """Runs in progress by token."""
        self._tokens = itertools.count(1)

    def begin(self, name: str, deadline: float, task: Any = None) -> int:
        """Note that ``name`` started now on this thread (or as asyncio ``task``); returns
        the token to :meth:`end` it with."""
        token = next(self._tokens)  # itertools.count is atomic under the GIL
        self.running[token] = Work(name, deadline, self.clock(), threading.get_ident(), task)
        return token

    def end(self, token: int) -> Work | None:
        """Note that the run of ``token`` ended; returns it (``None`` if unknown)."""
        return self.running.pop(token, None)

    def overdue(self) -> list[Work]:
        """Runs past their deadline now, longest over first."""
        now = self.clock()
        late = [w for w in list(self.running.values()) if now - w.started > w.deadline]
        late.sort(key=lambda w: w.started + w.deadline)
        return late

    def clear(self) -> None:
        """Forget every run (for tests: ``runtime_guard.testing.reset``)."""
        self.running.clear()

    def after_fork(self) -> None:
        """In a forked child only the forking thread lives on: other threads' runs are gone."""
        me = threading.get_ident()
        for token, work in list(self.running.items()):
            if work.ident != me:
                self.running.pop(token, None)


default_registry = WorkRegistry()
"""The registry runs with a deadline are noted in."""
_fork.after_fork_in_child(default_registry.after_fork)


def current_task() -> Any:
    """The asyncio task running on this thread, or ``None`` (never imports asyncio)."""
    module = sys.modules.get("asyncio")
    if module is None or module._get_running_loop() is None:
        return None
    return module.current_task()


class StuckComponent(Component):
    """Sends ``work_stuck`` once per run that outlives its deadline, with its stack."""

    name = "stuck"

    def __init__(self, registry: WorkRegistry | None = None) -> None:
        self.registry = registry or default_registry
        """The runs judged."""
        self.reports: deque[dict[str, Any]] = deque(maxlen=20)
        """The last reports sent, newest last."""

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        if not self.registry.running:
            return
        now = self.registry.clock()
        for work in self.registry.overdue():
            if work.reported:
                continue
            work.reported = True
            seconds = now - work.started
            stack = work.stack()
            data = {
                "kind": "work_stuck",
                "task": work.name,
                "seconds": round(seconds, 3),
                "deadline": work.deadline,
                "stack": stack,
                "wall": round(time.time(), 3),
            }
            if guard.config.report_dir:
                data["path"] = write_report(guard.config.report_dir, "work_stuck", dict(data))
            self.reports.append(data)
            _log.warning(
                "runtime_guard: %s has run %s, past its deadline of %s; it is at:\n%s",
                work.name,
                format_duration(seconds),
                format_duration(work.deadline),
                "\n".join(f"    {line}" for line in stack) or "    (stack not available)",
            )
            guard.send(signals.work_stuck, task=work.name, seconds=seconds, stack=stack)

    def health(self, guard: Guard) -> dict[str, Any]:
        now = self.registry.clock()
        return {
            "stuck_work": [
                {
                    "task": w.name,
                    "seconds": round(now - w.started, 3),
                    "deadline": w.deadline,
                }
                for w in self.registry.overdue()
            ]
        }
