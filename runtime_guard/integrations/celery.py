"""Celery: a guard for the process that runs the tasks, task shedding, recycling, per pool.

::

    from celery import Celery
    from runtime_guard.integrations.celery import install

    app = Celery("tasks", broker="redis://127.0.0.1:6379/0")
    install(app, shed={"tasks.build_report": "high"}, memory_limit="2GiB")

Where the guard lives depends on the pool. ``prefork`` runs tasks in child processes: each
child installs its own guard (``worker_process_init``). ``solo``, ``threads``, ``gevent``
and ``eventlet`` run tasks in the worker process itself: the guard is installed there, from
``worker_init``. ``Guard.health()["celery"]`` says which pool and which kind of recycling
this process has, and the worker logs the same once it is ready.

**Shedding.** A task type listed in ``shed`` that arrives while pressure is at or above its
level is not run: the same message (same task id, arguments, headers, links, chord and
group membership, retry count) is published again with a ``retry_after`` countdown, and the
current run ends in Celery's RETRY state with a :class:`TaskShed` reason. This is what
``Task.retry`` does, minus the two things that would charge the task: ``Task.retry`` adds
one to ``request.retries`` and stores ``max_retries=`` on the task object, which every
later request of that type in the process then uses. A deferral does neither; it counts
itself in its own message header (:data:`DEFERRALS_HEADER`). After ``max_deferrals``
deferrals the task runs whatever the pressure, so the guard delays work but never drops it.
With ``task_acks_late`` the original message is acknowledged once the copy is published,
as for any retry; a crash between the two delivers the task twice, as ``Task.retry`` would.

**Recycling** on ``restart_requested`` (after ``recycle_min_lifetime`` and a random
``recycle_jitter``):

- ``prefork``: the pool process exits after its current task and billiard starts a fresh
  one. It goes through billiard's own check after every task, ``max_memory_per_child``:
  :func:`install` sets ``worker_max_memory_per_child`` to a figure no process reaches, so
  billiard checks, and the guard makes the check report "over" once a restart is wanted.
  An idle process is recycled after its next task.
- ``solo``, ``threads``, ``gevent``, ``eventlet``: there is no pool process to replace, and
  Celery's only in-place restart is ``SIGHUP``'s re-exec, which works only without a
  controlling terminal and which its documentation calls prone to problems and not for
  production. So the worker does a warm shutdown, the same as on ``SIGTERM`` (it stops
  taking tasks, finishes the running ones, unacknowledged messages go back to the
  broker), and exits with status :data:`RECYCLE_EXIT_CODE` (75,
  ``EX_TEMPFAIL``): non-zero, so ``Restart=on-failure`` (systemd), ``on-failure``
  (docker) and supervisord's default ``autorestart=unexpected`` restart it, as Kubernetes
  and ``--restart always`` do anyway. Without a supervisor the worker stays down; pass
  ``recycle=False`` to keep it up instead.

**Prometheus multiprocess mode** (``PROMETHEUS_MULTIPROC_DIR`` set): a process that runs
tasks marks its own live-gauge files dead when it exits (``worker_process_shutdown``,
``worker_shutdown``), including when the guard recycles it; a process that died without
saying so (killed by the kernel or by a hard time limit) is marked dead by the pool process
that replaces it, and by the next worker start, which both drop the files of pids that no
longer run.
"""

from __future__ import annotations

import functools
import glob
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import runtime_guard
from runtime_guard import stuck
from runtime_guard._component import Component
from runtime_guard._current import get_guard
from runtime_guard.config import Config, ConfigError
from runtime_guard.guard import Guard
from runtime_guard.integrations._http import missing_extra
from runtime_guard.integrations._recycle import Recycler, attach_recycler
from runtime_guard.pressure import Pressure, parse_level

try:
    import billiard.pool
    import celery
    from celery import signals as celery_signals
    from celery.app.trace import build_tracer
    from celery.exceptions import Retry
    from celery.worker import state as worker_state
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("celery", "celery", "celery") from exc

__all__ = [
    "DEFERRALS_HEADER",
    "RECYCLE_EXIT_CODE",
    "TaskShed",
    "enable_recycling",
    "install",
    "recycle_after_task",
    "shutdown_worker",
    "watch_time_limits",
]

_log = logging.getLogger("runtime_guard")

DEFERRALS_HEADER = "runtime_guard_deferrals"
"""Message header that counts how often a task was deferred by shedding."""

RECYCLE_EXIT_CODE = os.EX_TEMPFAIL
"""Exit status of a worker that a pool without pool processes recycles (75)."""

# worker_max_memory_per_child is in KiB; this is far above any real process, so billiard
# checks after every task (what recycling needs) without ever recycling on memory alone.
_NEVER_KIB = 1 << 42

_PREFORK = "prefork"
# Pool modules by the name Celery gives the pool; a subclass counts as its base's pool.
_POOL_MODULES = {
    "celery.concurrency.prefork": _PREFORK,
    "celery.concurrency.solo": "solo",
    "celery.concurrency.thread": "threads",
    "celery.concurrency.gevent": "gevent",
    "celery.concurrency.eventlet": "eventlet",
}

_recycle_requested = False
_real_mem_rss: Callable[[], int] = billiard.pool.mem_rss
_worker_pid: int | None = None
"""Pid of the worker (main) process, set from ``worker_init``; pool children differ."""


class TaskShed(Exception):
    """Why a shed task was deferred: pressure was at or above its level."""


# -- recycling ----------------------------------------------------------------------------


def _mem_rss() -> int:
    # billiard recycles a pool process after a task when this exceeds
    # max_memory_per_child; after restart_requested it does, so the process exits cleanly
    # and the pool replaces it, exactly as for a process that outgrew its memory.
    if _recycle_requested:
        return _NEVER_KIB * 2
    return _real_mem_rss()


def recycle_after_task(reason: str = "") -> None:
    """Make this prefork pool process exit after its current task (or its next one, when idle)."""
    global _recycle_requested
    _recycle_requested = True
    billiard.pool.mem_rss = _mem_rss


def shutdown_worker(reason: str = "") -> None:
    """Warm shutdown of this worker, exit status :data:`RECYCLE_EXIT_CODE`.

    The same flag Celery's SIGTERM handler sets, with another exit status: the consumer
    loop sees it between tasks (at least once a second when idle), stops consuming, waits
    for the running tasks and exits. Safe from any thread: it only sets the flag.
    """
    worker_state.should_stop = RECYCLE_EXIT_CODE


def enable_recycling(
    guard: Guard,
    *,
    min_lifetime: float | None = None,
    jitter: float | None = None,
    pool: str = _PREFORK,
) -> Recycler:
    """Recycle on ``restart_requested``: the pool process (prefork), else the whole worker."""
    stop = recycle_after_task if pool == _PREFORK else shutdown_worker
    return attach_recycler(guard, stop, "celery", min_lifetime=min_lifetime, jitter=jitter)


# -- what this process is -----------------------------------------------------------------


def _pool_name(pool_cls: Any) -> str:
    """Celery's name for a pool given as a class or a name, without importing it."""
    if isinstance(pool_cls, str):
        from celery.concurrency import ALIASES

        path = ALIASES.get(pool_cls, pool_cls)
        return _POOL_MODULES.get(path.partition(":")[0], pool_cls)
    for base in getattr(pool_cls, "__mro__", ()):
        name = _POOL_MODULES.get(getattr(base, "__module__", ""))
        if name is not None:
            return name
    return getattr(pool_cls, "__qualname__", repr(pool_cls))


def _recycle_detail(pool: str, recycle: bool) -> tuple[str, str]:
    if not recycle:
        return "off", "recycling is off (recycle=False)"
    if pool == _PREFORK:
        return "pool process", (
            "a restart request recycles the pool process after its current task; "
            "the pool starts a fresh one"
        )
    return "worker", (
        f"pool {pool!r} runs tasks in the worker process, so there is no pool process to "
        "recycle: a restart request makes a warm shutdown of the whole worker after its "
        f"running tasks, exit status {RECYCLE_EXIT_CODE}, for its supervisor (systemd, "
        "Kubernetes, docker --restart) to start a fresh one"
    )


class CeleryState(Component):
    """What ``Guard.health()["celery"]`` reports: the pool, its recycling, the deferrals."""

    name = "celery"

    def __init__(self, pool: str, recycle: bool, max_deferrals: int | None) -> None:
        self.deferred = 0
        """Task runs this process deferred (shed)."""
        self.ran_past_limit = 0
        """Shed task runs this process ran under pressure after ``max_deferrals``."""
        self.configure(pool, recycle, max_deferrals)

    def configure(self, pool: str, recycle: bool, max_deferrals: int | None) -> None:
        """Set what is reported (again, when a second app sets the same process up)."""
        self.pool = pool
        """Celery's name for the pool that runs this process's tasks."""
        self.recycle, self.recycle_detail = _recycle_detail(pool, recycle)
        self.max_deferrals = max_deferrals

    def health(self, guard: Guard) -> dict[str, Any]:
        return {
            "celery": {
                "pool": self.pool,
                "recycle": self.recycle,
                "recycle_detail": self.recycle_detail,
                "max_deferrals": self.max_deferrals,
                "tasks_deferred": self.deferred,
                "tasks_run_past_max_deferrals": self.ran_past_limit,
            }
        }

    def after_fork(self, guard: Guard) -> None:
        self.deferred = self.ran_past_limit = 0


def _state(guard: Guard) -> CeleryState | None:
    component = guard.component(CeleryState.name)
    return component if isinstance(component, CeleryState) else None


# -- shedding -----------------------------------------------------------------------------


def _deferrals(request: Any) -> int:
    # Custom headers are in request.headers; Celery versions that do not collect them
    # there still set each one as an attribute of the request.
    value = (request.headers or {}).get(DEFERRALS_HEADER, request.get(DEFERRALS_HEADER, 0))
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _defer(task: Any, guard: Guard, retry_after: float, max_deferrals: int | None) -> Retry | None:
    """Publish this request again with a countdown; the Retry to raise, or None to run now."""
    request = task.request
    if request.called_directly or request.is_eager:
        return None  # no broker to defer to: the caller runs it in its own process
    done = _deferrals(request)
    state = _state(guard)
    if max_deferrals is not None and done >= max_deferrals:
        if state is not None:
            state.ran_past_limit += 1
        _log.warning(
            "runtime_guard: running %s[%s] at %s memory pressure: deferred %d times, "
            "max_deferrals=%d",
            task.name,
            request.id,
            guard.pressure.name,
            done,
            max_deferrals,
        )
        return None
    headers = dict(request.headers or {})
    headers[DEFERRALS_HEADER] = done + 1
    # Task.retry's own recipe (signature_from_request, then apply_async), with the request's
    # retry count left as it is: as_execution_options carries retries, task id, links,
    # chord, group and custom headers over; routing follows delivery_info.
    signature = task.signature_from_request(request, countdown=retry_after, headers=headers)
    try:
        signature.apply_async()
    except Exception:
        # Not published: running now under pressure is better than losing the task.
        _log.exception("runtime_guard: could not defer %s[%s]; runs now", task.name, request.id)
        return None
    if state is not None:
        state.deferred += 1
    limit = "" if max_deferrals is None else f" of {max_deferrals}"
    reason = TaskShed(
        f"{task.name} shed at {guard.pressure.name} memory pressure "
        f"(deferral {done + 1}{limit}, retry in {retry_after:g}s)"
    )
    return Retry(exc=reason, when=retry_after, sig=signature)


def _shed_task(task: Any, level: Pressure, retry_after: float, max_deferrals: int | None) -> bool:
    """Wrap ``task.run`` so it defers itself under pressure; False if already wrapped."""
    run = task.run
    if getattr(run, "_runtime_guard_shed", False):
        return False
    failed = False

    @functools.wraps(run)
    def guarded_run(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        # The only cost on every run: one global read and one comparison.
        guard = get_guard()
        if guard is not None and guard.pressure >= level and not failed:
            retry = None
            try:
                retry = _defer(task, guard, retry_after, max_deferrals)
            except Exception:
                failed = True
                _log.exception("runtime_guard: shedding of %s failed; it is off now", task.name)
            if retry is not None:
                raise retry
        return run(*args, **kwargs)

    guarded_run._runtime_guard_shed = True  # type: ignore[attr-defined]
    task.run = guarded_run
    return True


def _shed_tasks(
    app: celery.Celery,
    levels: Mapping[str, Pressure],
    retry_after: float,
    max_deferrals: int | None,
    hostname: str | None,
) -> None:
    for name, level in levels.items():
        task = app.tasks.get(name)
        if task is None:
            _log.warning("runtime_guard: no task %r to shed; check the name", name)
            continue
        if _shed_task(task, level, retry_after, max_deferrals) and task.__trace__ is not None:
            # The tracer keeps the run it was built with: build it again around the wrapper.
            task.__trace__ = build_tracer(name, task, app.loader, hostname, app=app)


# -- Prometheus multiprocess files --------------------------------------------------------

_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def _multiproc_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _running(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # not ours to read, but there


def _mark_dead(pids: Iterable[int]) -> None:
    directory = _multiproc_dir()
    if directory is None:
        return
    try:
        from prometheus_client import multiprocess

        for pid in pids:
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    except Exception:
        _log.exception("runtime_guard: could not mark Celery processes dead for Prometheus")


def _mark_exited_dead() -> list[int]:
    """Mark dead the processes whose live-gauge files remain but which no longer run.

    Covers pool processes that died without their own shutdown hook (SIGKILL, the kernel's
    OOM killer). Returns the pids marked.
    """
    directory = _multiproc_dir()
    if directory is None:
        return []
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        match = _LIVE_FILE.search(os.path.basename(path))
        if match is not None:
            pids.add(int(match.group(1)))
    dead = sorted(pid for pid in pids if pid != os.getpid() and not _running(pid))
    _mark_dead(dead)
    return dead


def _process_exits(installed: bool) -> None:
    """This task-running process is going: stop its guard, then drop its live gauges."""
    if installed:
        runtime_guard.uninstall()  # no sample may write the files after they are dropped
    _mark_dead([os.getpid()])


# -- install ------------------------------------------------------------------------------


def _levels(shed: Mapping[str, Any] | Iterable[str]) -> dict[str, Pressure]:
    if isinstance(shed, str):
        raise ConfigError(f"shed: expected task names or a mapping of them, got {shed!r}")
    if not isinstance(shed, Mapping):
        return dict.fromkeys(shed, Pressure.HIGH)
    return {name: parse_level(level, f"shed[{name!r}]") for name, level in shed.items()}


def _seconds(value: Any, option: str) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and value > 0 and math.isfinite(value):
        return float(value)
    raise ConfigError(f"{option}: expected a number of seconds greater than 0, got {value!r}")


def _max_deferrals(value: Any) -> int | None:
    if value is None or (not isinstance(value, bool) and isinstance(value, int) and value >= 1):
        return value
    raise ConfigError(
        f"max_deferrals: expected a whole number of at least 1 or None, got {value!r}"
    )


class _Setup:
    """What :func:`install` connects to one app's worker signals."""

    def __init__(
        self,
        app: celery.Celery,
        *,
        levels: dict[str, Pressure],
        retry_after: float,
        max_deferrals: int | None,
        recycle: bool,
        options: dict[str, Any],
    ) -> None:
        self.app = app
        self.levels = levels
        self.retry_after = retry_after
        self.max_deferrals = max_deferrals
        self.recycle = recycle
        self.options = options
        self.pool = _PREFORK
        self.installed = False
        """Whether this process's guard was installed here (so it is stopped here)."""

    def _install_guard(self, pool: str) -> None:
        already = runtime_guard.get_guard() is not None
        guard = runtime_guard.install(**self.options)
        self.installed = not already
        if self.recycle:
            enable_recycling(guard, pool=pool)
        state = guard.component(CeleryState.name)
        if isinstance(state, CeleryState):
            state.configure(pool, self.recycle, self.max_deferrals)
        else:
            guard.add_component(CeleryState(pool, self.recycle, self.max_deferrals))

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        global _worker_pid
        if getattr(sender, "app", self.app) is not self.app:
            return  # another app's worker in this process
        try:
            _worker_pid = os.getpid()
            self.pool = _pool_name(getattr(sender, "pool_cls", None) or self.app.conf.worker_pool)
            # Wrapped before the consumer builds its tracers and before prefork forks, so
            # every process that runs tasks inherits the wrapper.
            _shed_tasks(self.app, self.levels, self.retry_after, self.max_deferrals, None)
            _mark_exited_dead()
            if self.pool != _PREFORK:
                self._install_guard(self.pool)
        except Exception:
            _log.exception("runtime_guard: could not set the guard up in a Celery worker")

    def on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", self.app) is not self.app:
            return
        # Logged here, not at worker_init: only now has Celery set its logging up.
        where = "each pool process" if self.pool == _PREFORK else "the worker process"
        level = logging.INFO if self.pool == _PREFORK or not self.recycle else logging.WARNING
        _log.log(
            level,
            "runtime_guard: Celery pool %r: a guard in %s; %s",
            self.pool,
            where,
            _recycle_detail(self.pool, self.recycle)[1],
        )

    def on_process_init(self, sender: Any = None, **_: Any) -> None:
        if os.getpid() == _worker_pid:
            return  # the solo pool sends this in the worker process: set up at worker_init
        try:
            # A spawned child imported the app afresh: wrap here, tracers already built.
            hostname = sender if isinstance(sender, str) else None
            _shed_tasks(self.app, self.levels, self.retry_after, self.max_deferrals, hostname)
            _mark_exited_dead()  # the process this one replaces, if it was killed
            self._install_guard(_PREFORK)
            _log.info("runtime_guard: guard installed in Celery pool process %d", os.getpid())
        except Exception:
            _log.exception("runtime_guard: could not set the guard up in a Celery pool process")

    def on_process_shutdown(self, sender: Any = None, **_: Any) -> None:
        if os.getpid() == _worker_pid:
            return
        try:
            _process_exits(self.installed)
        except Exception:
            _log.exception("runtime_guard: could not clean up after a Celery pool process")

    def on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", self.app) is not self.app or self.pool == _PREFORK:
            return  # prefork: each pool process cleans up after itself
        try:
            _process_exits(self.installed)
        except Exception:
            _log.exception("runtime_guard: could not clean up after a Celery worker")


def install(
    app: celery.Celery,
    *,
    shed: Mapping[str, Any] | Iterable[str] = (),
    retry_after: float = 30,
    max_deferrals: int | None = 10,
    recycle: bool = True,
    **options: Any,
) -> None:
    """Set ``app`` up so that the process that runs its tasks has a guard, for any pool.

    ``shed`` maps task names to the pressure level from which they are deferred (a plain
    list defers from ``"high"``); a deferred task is published again to run in
    ``retry_after`` seconds, at most ``max_deferrals`` times (``None``: no limit), then
    runs whatever the pressure. ``recycle=False`` leaves recycling off. ``options`` are
    :func:`runtime_guard.install` options. Everything is validated now, so call it where
    the app is defined, before the worker starts.
    """
    Config.from_options(options)
    setup = _Setup(
        app,
        levels=_levels(shed),
        retry_after=_seconds(retry_after, "retry_after"),
        max_deferrals=_max_deferrals(max_deferrals),
        recycle=bool(recycle),
        options=dict(options),
    )
    if recycle and not app.conf.worker_max_memory_per_child:
        app.conf.worker_max_memory_per_child = _NEVER_KIB
    uid = f"runtime_guard.celery.{id(app)}"
    connections: list[tuple[Any, Callable[..., None]]] = [
        (celery_signals.worker_init, setup.on_worker_init),
        (celery_signals.worker_ready, setup.on_worker_ready),
        (celery_signals.worker_process_init, setup.on_process_init),
        (celery_signals.worker_process_shutdown, setup.on_process_shutdown),
        (celery_signals.worker_shutdown, setup.on_worker_shutdown),
    ]
    for signal, receiver in connections:
        # One uid per app: installing again replaces the earlier setup instead of doubling it.
        signal.disconnect(dispatch_uid=uid)
        signal.connect(receiver, weak=False, dispatch_uid=uid)
    watch_time_limits()
    # Leak reports rank tasks by what each leaves allocated.
    from runtime_guard.leaks.routes import connect_celery

    connect_celery(celery_signals)


# -- stuck tasks: one running past its time limit is reported with its stack -------------

_timed_tasks: dict[str, int] = {}


def _time_limit(task: Any) -> float | None:
    # The soft limit when there is one: under prefork the hard one kills the process, so
    # only the soft one leaves time to say where the task hung.
    hard, soft = getattr(getattr(task, "request", None), "timelimit", None) or (None, None)
    conf = task.app.conf
    hard = hard or task.time_limit or conf.task_time_limit
    soft = soft or task.soft_time_limit or conf.task_soft_time_limit
    limits = [float(v) for v in (hard, soft) if v]
    return min(limits) if limits else None


def _task_started(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    if sender is None or task_id is None:
        return
    try:
        limit = _time_limit(sender)
        if limit is not None and limit > 0:
            _timed_tasks[task_id] = stuck.default_registry.begin(sender.name, limit)
    except Exception:
        _log.warning("runtime_guard: cannot watch the time limit of %r", sender, exc_info=True)


def _task_finished(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    token = _timed_tasks.pop(task_id or "", None)
    if token is not None:
        stuck.default_registry.end(token)


def watch_time_limits() -> None:
    """Report a task still running past its time limit (``work_stuck``, with its stack);
    called by :func:`install`, idempotent."""
    celery_signals.task_prerun.connect(_task_started, weak=False)
    celery_signals.task_postrun.connect(_task_finished, weak=False)
