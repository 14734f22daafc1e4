"""Where each thread and asyncio task was made: a cheap site recorded at creation.

Threads: ``threading.Thread.__init__`` is tracked by a tracking registry of this module's
own (so threads never show up among the unreleased clients). Tasks: asyncio's
``BaseEventLoop.create_task`` (the path of ``asyncio.create_task``, ``TaskGroup`` and
``ensure_future``) is wrapped once ``asyncio`` is imported, never importing it earlier;
loops of other implementations (uvloop) create tasks out of sight, so their tasks are
counted but have no site. Each creation costs the site and one weak reference (measured
in ``benchmarks/bench_resources.py``). The first task made on a loop also tells the
listeners of :meth:`CreationHooks.add_loop_listener` (the loop-lag monitor) about the loop.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any

from runtime_guard import _fork
from runtime_guard._users import Users
from runtime_guard.tracking import sites as _sites
from runtime_guard.tracking.patching import Patch, replace, restore
from runtime_guard.tracking.records import Entry, Record
from runtime_guard.tracking.registry import TrackingRegistry

__all__ = ["TASKS", "THREADS", "CreationHooks", "default_hooks"]

_log = logging.getLogger("runtime_guard")

THREADS = "threading.Thread"
"""The name threads are recorded under."""
TASKS = "asyncio.Task"
"""The name asyncio tasks are recorded under."""


class CreationHooks:
    """Records the creation site of every thread and asyncio task while enabled.

    Enabling is counted: each component that needs the sites enables once and disables once
    when it closes; the hooks come off when the last one does.
    """

    def __init__(self, registry: TrackingRegistry | None = None) -> None:
        self.registry = registry or TrackingRegistry()
        """Where the records are kept (a registry of its own by default)."""
        self._users = Users()
        self._patches: list[Patch] = []
        self._loops: dict[int, weakref.ref[Any]] = {}
        self._loop_listeners: list[Callable[[Any], None]] = []
        self._failed = False

    @property
    def enabled(self) -> bool:
        """Whether the hooks are in place."""
        return self._users.any

    def enable(self) -> None:
        """Put the hooks in place (the asyncio one once asyncio is imported)."""
        if not self._users.add():
            return
        self.registry.track(threading.Thread, name=THREADS, release=())
        self.registry.watcher.watch("asyncio.base_events", self._hook_tasks)

    def disable(self) -> None:
        """Take the hooks off when the last user disables them."""
        if not self._users.remove():
            return
        self.registry.untrack_all()
        restore(self._patches)
        self._loops.clear()

    # -- asyncio ----------------------------------------------------------------------------

    def _hook_tasks(self, module: ModuleType) -> None:
        loop_class = getattr(module, "BaseEventLoop", None)
        original = None if loop_class is None else loop_class.__dict__.get("create_task")
        if loop_class is None or not callable(original):
            return
        task_class = getattr(getattr(module, "tasks", None), "Task", object)
        entry = self.registry.declare(TASKS, task_class)
        replace(self._patches, loop_class, "create_task", self._create_task(original, entry))

    def _create_task(self, original: Callable[..., Any], entry: Entry) -> Callable[..., Any]:
        # Bound as closure cells: this runs on every task creation.
        store = self.registry.store
        records, add, capture, monotonic = store.records, store.add, _sites.capture, time.monotonic
        loops, seen = self._loops, self._new_loop

        @functools.wraps(original)
        def create_task(loop: Any, *args: Any, **kwargs: Any) -> Any:
            task = original(loop, *args, **kwargs)
            try:
                if id(task) not in records:
                    add(task, entry, capture(1), monotonic())
                if id(loop) not in loops:
                    seen(loop)
            except Exception:
                if not self._failed:
                    self._failed = True
                    _log.warning("runtime_guard: recording a task's creation failed", exc_info=True)
            return task

        return create_task

    def _new_loop(self, loop: Any) -> None:
        key = id(loop)
        self._loops[key] = weakref.ref(loop, lambda _: self._loops.pop(key, None))
        for listener in list(self._loop_listeners):
            try:
                listener(loop)
            except Exception:
                _log.warning("runtime_guard: a loop listener failed", exc_info=True)

    def add_loop_listener(self, listener: Callable[[Any], None]) -> None:
        """Call ``listener(loop)`` for each event loop seen making its first task from now
        on (and for the loops seen already)."""
        self._loop_listeners.append(listener)
        for ref in list(self._loops.values()):
            loop = ref()
            if loop is not None:
                listener(loop)

    def remove_loop_listener(self, listener: Callable[[Any], None]) -> None:
        """Stop calling ``listener``."""
        if listener in self._loop_listeners:
            self._loop_listeners.remove(listener)

    # -- reading ----------------------------------------------------------------------------

    def record_of(self, obj: Any) -> Record | None:
        """The creation record of a live thread or task, when it was made while enabled."""
        rec = self.registry.store.records.get(id(obj))
        return rec if rec is not None and rec() is obj else None

    def tasks(self) -> list[tuple[Any, Record]]:
        """Live tasks made while enabled, with their records, oldest first."""
        entry = self.registry.entry(TASKS)
        if entry is None:
            return []
        out = []
        for rec in self.registry.store.of(entry):
            task = rec()
            if task is not None:
                out.append((task, rec))
        out.sort(key=lambda pair: pair[1].created)
        return out

    def after_fork(self) -> None:
        """In a forked child: a fresh lock; the parent's loops do not run here."""
        self._users.after_fork()
        self._loops.clear()


default_hooks = CreationHooks()
"""The hooks the installed guard's components use."""
_fork.after_fork_in_child(default_hooks.after_fork)
