"""One view per container: each worker publishes its figures, any worker reads them all.

Every process that installed the guard keeps a small file of its own in the container's
shared directory (:func:`runtime_guard._container.container_dir`): its pid, memory figures
and pressure, rewritten after every sample, and its health in figures (status, shed
features, suspected leaks, unreleased objects, a recycle under way), rewritten at the sample
after the level changes or a signal says the health did (a feature shed, a leak, a recycle
asked for), and every half minute for what changes without one. Any process of
the container (a worker answering ``/readyz``, ``runtime-guard status`` in a shell) reads
the files of every live worker: :func:`read_container`. A worker that died, however it
died, drops out of the view at the next read: its pid no longer runs, or runs another
process. Only figures are published, never source paths or report text: the directory is
readable by the same user only, but the view is served on public routes.

Publishing runs on the sampler thread after every sample, so it is kept to six stores into
a memory-mapped page per sample. Measured beside the sample in the same run
(``benchmarks/bench_container.py``): formatting the health as JSON and writing it on every
sample costs as much as the sample itself; one ``struct.pack_into`` of the figures about
7 %; the stores through typed views of the page about 3 %.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import mmap
import os
import re
import struct
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime_guard import _container, _current, signals
from runtime_guard._component import Component
from runtime_guard.pressure import Pressure

if TYPE_CHECKING:
    from runtime_guard.guard import Guard
    from runtime_guard.sample import Sample

__all__ = [
    "RECYCLER",
    "SLOW_REFRESH",
    "ContainerView",
    "container_view",
    "draining",
    "file_name",
    "read_container",
    "this_worker",
    "worker_health",
]

_log = logging.getLogger("runtime_guard")

RECYCLER = "recycler"
"""Name of the component whose state says this worker is draining (see :func:`draining`)."""

# The page: the figures of the last sample at offset 0 (the first 16 bytes and the start
# time and interval written once, the rest rewritten on every sample, one 8-byte slot each);
# the health in figures as JSON at _SLOW_AT, rewritten when it changes. Slots are 8-byte
# aligned, so a reader that copies the page while it is rewritten gets each slot whole;
# readers copy twice and take a copy only when both agree (see _read_page).
_PAGE = 4096
_MAGIC = b"RGW1"
_FAST = struct.Struct("<4sH2xi4xdddqqqdq")
# Slots (8-byte words) of the figures rewritten on every sample.
_UPDATED, _RSS, _USAGE, _LIMIT, _FRACTION, _LEVEL = 3, 5, 6, 7, 8, 9
_SLOW_HEAD = struct.Struct("<II")
_SLOW_AT = 128
_SLOW_MAX = _PAGE - _SLOW_AT - _SLOW_HEAD.size
_FILE = re.compile(r"rg-worker-(\d+)\.page")

# How often the health part is rewritten when nothing forces it sooner: a level change and
# the signals below force it at the next sample; what changes without a signal (a leak
# suspicion cleared, counts of unreleased objects) is at most this late.
SLOW_REFRESH = 30.0
_CHANGES = (
    "feature_shed",
    "feature_restored",
    "leak_suspected",
    "unreleased_objects",
    "restart_requested",
    "recycle_pending",
)
# How often a publisher removes the files of workers that died without removing their own.
_SWEEP_SECONDS = 60.0


def file_name(pid: int) -> str:
    """The file a worker of pid ``pid`` publishes in."""
    return f"rg-worker-{pid}.page"


def draining(guard: Guard) -> str | None:
    """Why this worker should get no new requests (a recycle scheduled or under way).

    The one seam between the recycling components and ``/readyz`` and the container view:
    the component named :data:`RECYCLER` says so through a ``draining`` attribute (a reason,
    or ``None``) when it has one, else through ``reason`` (set from the moment a recycle
    is scheduled: the worker stops accepting when it fires, and a load balancer should
    stop sending before that).
    """
    return _draining_of(guard.component(RECYCLER))


def _draining_of(recycler: object) -> str | None:
    if recycler is None:
        return None
    reason = getattr(recycler, "draining", _MISSING)
    if reason is _MISSING:
        reason = getattr(recycler, "reason", None)
    return None if reason is None else str(reason) or "recycling"


_MISSING = object()


def worker_health(guard: Guard) -> dict[str, Any]:
    """This worker's health in figures, as it is published for the rest of the container."""
    from runtime_guard.integrations._health import public_health

    health = public_health(guard.health())
    for key in _NOT_PUBLISHED:
        health.pop(key, None)
    health["draining"] = draining(guard)
    return health


# Figures of the moment that the health part, rewritten only every few seconds, would show
# stale; the view tells a worker's age from its start time instead.
_NOT_PUBLISHED = ("uptime_seconds", "samples", "heap_blocks", "threads", "gc")


def _started_here() -> float:
    started = _container.process_started(os.getpid())
    return started or time.time()


class _Page:
    """This process's page, mapped, with typed views of its 8-byte slots."""

    def __init__(self, fd: int) -> None:
        self.map = mmap.mmap(fd, _PAGE)
        self._view = memoryview(self.map)
        self.words = self._view.cast("q")
        """The slots as 64-bit integers."""
        self.floats = self._view.cast("d")
        """The same slots as doubles."""

    def close(self) -> None:
        # The views first: a map with views of it cannot be closed.
        for view in (self.words, self.floats, self._view):
            view.release()
        self.map.close()


class ContainerPublisher(Component):
    """Publishes the process-wide guard's figures to the container directory after each sample.

    Attached to every guard by ``install()``; it publishes only while its guard is the
    process-wide one (a guard made for a test in the same process stays out of the view).
    A directory that cannot be used is logged once and publishing stops; the guard goes on.
    """

    name = "container"

    def __init__(
        self,
        setting: str | None = None,
        *,
        process_wide: bool = True,
        slow_refresh: float = SLOW_REFRESH,
    ) -> None:
        self.setting = setting
        """A directory, ``"off"``, or ``None`` for the environment's (see
        :func:`runtime_guard._container.container_dir`)."""
        self.process_wide = process_wide
        """Publish only while the guard is the process-wide one (``False`` for tests)."""
        self.slow_refresh = slow_refresh
        """Seconds between rewrites of the health part when nothing forces one sooner."""
        self.directory: str | None = None
        """Where this process publishes; ``None`` until the first sample, or when off."""
        self.path: str | None = None
        """This process's file."""
        self._page: _Page | None = None
        self._disabled = False
        self._pid = 0
        self._started = 0.0
        self._slow_due = -math.inf
        self._sweep_due = 0.0
        self._dirty = False
        self._level = Pressure.OK
        self._draining: str | None = None
        self._lock = threading.Lock()
        self._receivers: list[tuple[Any, Any]] = []

    # -- the sampler's side --------------------------------------------------------------

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        if self._disabled or (self.process_wide and _current.guard is not guard):
            return
        page = self._page
        if page is None:
            page = self._open(guard, sample)
            if page is None:
                return
        now = sample.monotonic
        # A recycle decided by a component earlier in this sample is published with it:
        # the worker may be gone before a signal's next sample.
        drain = draining(guard)
        # Under the lock, so that remove() (at exit, on another thread) never unmaps the page
        # between here and the last store: a store to a released view raises.
        with self._lock:
            if self._page is not page:
                return
            # Shedding, relief and the status follow the level: a new level is published
            # whole, and so is whatever a signal said changed (see _changed).
            if (
                self._dirty
                or now >= self._slow_due
                or sample.pressure != self._level
                or drain != self._draining
            ):
                self._level, self._draining = sample.pressure, drain
                self._write_health(guard, page.map, now)
            floats, words = page.floats, page.words
            floats[_UPDATED] = sample.wall
            words[_RSS] = sample.rss
            words[_USAGE] = sample.usage
            words[_LIMIT] = sample.limit
            floats[_FRACTION] = sample.usage_fraction
            words[_LEVEL] = sample.pressure

    def _changed(self, sender: object, **_: object) -> None:
        # On the signal thread, after the signal's other receivers may or may not have run
        # (the recycler sets its reason in one): the next sample rewrites the health part.
        self._dirty = True

    def _write_health(self, guard: Guard, page: mmap.mmap, now: float) -> None:
        self._slow_due = now + self.slow_refresh
        self._dirty = False
        health = worker_health(guard)
        data = json.dumps(health, separators=(",", ":"), default=str).encode()
        if len(data) > _SLOW_MAX:  # many unreleased types: keep the totals that fit
            health["unreleased_objects"] = {}
            data = json.dumps(health, separators=(",", ":"), default=str).encode()[:_SLOW_MAX]
        page[_SLOW_AT + _SLOW_HEAD.size : _SLOW_AT + _SLOW_HEAD.size + len(data)] = data
        _SLOW_HEAD.pack_into(page, _SLOW_AT, len(data), 1)
        if now >= self._sweep_due:
            self._sweep_due = now + _SWEEP_SECONDS
            if self.directory is not None:
                read_container(self.directory, remove_dead=True)

    def _open(self, guard: Guard, sample: Sample) -> _Page | None:
        with self._lock:
            if self._page is not None:
                return self._page
            directory = _container.container_dir(self.setting)
            if directory is None:
                self._disabled = True
                return None
            pid = os.getpid()
            path = os.path.join(directory, file_name(pid))
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                try:
                    # Written, not truncated to size: the page's storage is allocated now
                    # (a full tmpfs fails here, not later as SIGBUS on a store), and a file
                    # is never shortened under a process that maps it.
                    if os.pwrite(fd, bytes(_PAGE), 0) != _PAGE:
                        raise OSError("short write")
                    page = _Page(fd)
                finally:
                    os.close(fd)
            except (OSError, ValueError) as exc:
                self._disabled = True
                _log.warning("runtime_guard: cannot publish figures in %s: %s", directory, exc)
                return None
            self.directory, self.path, self._page = directory, path, page
            self._pid, self._started = pid, _started_here()
            _FAST.pack_into(
                page.map,
                0,
                _MAGIC,
                1,
                pid,
                self._started,
                sample.wall,
                guard.config.interval,
                sample.rss,
                sample.usage,
                sample.limit,
                sample.usage_fraction,
                sample.pressure,
            )
            self._slow_due = -math.inf
            if not self._receivers:
                for name in _CHANGES:
                    signal = getattr(signals, name, None)
                    if signal is not None:
                        signal.connect(self._changed, sender=guard)
                        self._receivers.append((signal, self._changed))
            _remove_at_exit(self)
            return page

    # -- lifecycle -----------------------------------------------------------------------

    def after_fork(self, guard: Guard) -> None:
        # The parent's page stays the parent's: the child publishes under its own pid.
        page, self._page = self._page, None
        if page is not None:
            with contextlib.suppress(Exception):
                page.close()
        self._lock = threading.Lock()
        self.path = None
        self._disabled = False
        self._dirty = False

    def close(self, guard: Guard) -> None:
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)
        self._receivers.clear()
        with _exit_lock:
            _exiting.discard(self)
        self.remove()

    def remove(self) -> None:
        """Leave the view: unmap and delete this process's file (never raises); a sample
        after it publishes nothing."""
        with self._lock:
            page, self._page = self._page, None
            path, self.path = self.path, None
            self._disabled = True
        if page is not None:
            with contextlib.suppress(Exception):
                page.close()
        if path is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(path)


# Publishers whose file is to go at exit; held weakly, and left by close(), so that guards
# installed and uninstalled many times keep none of theirs.
_exiting: weakref.WeakSet[ContainerPublisher] = weakref.WeakSet()
_exit_lock = threading.Lock()
_exit_registered = False


def _remove_at_exit(publisher: ContainerPublisher) -> None:
    global _exit_registered
    import atexit

    with _exit_lock:
        if not _exit_registered:
            _exit_registered = True
            atexit.register(_remove_all)
        _exiting.add(publisher)


def _remove_all() -> None:
    for publisher in list(_exiting):
        publisher.remove()


# -- the readers' side -------------------------------------------------------------------


def _read_page(path: str) -> bytes | None:
    """The file's page, copied twice until two copies agree (a write was not under way)."""
    try:
        with open(path, "rb", buffering=0) as f:
            previous = f.read(_PAGE)
            for _ in range(5):
                current = os.pread(f.fileno(), _PAGE, 0)
                if current == previous:
                    return current
                previous = current
    except OSError:
        return None
    return None


def _parse(page: bytes) -> dict[str, Any] | None:
    if len(page) < _PAGE or page[:4] != _MAGIC:
        return None  # not written yet, or not ours
    (_m, _v, pid, started, updated, interval, rss, usage, limit, fraction, level) = (
        _FAST.unpack_from(page, 0)
    )
    length, _version = _SLOW_HEAD.unpack_from(page, _SLOW_AT)
    record: dict[str, Any] = {}
    if 0 < length <= _SLOW_MAX:
        start = _SLOW_AT + _SLOW_HEAD.size
        with contextlib.suppress(ValueError):
            slow = json.loads(page[start : start + length])
            if isinstance(slow, dict):
                record.update(slow)
    try:
        pressure = Pressure(level).name.lower()
    except ValueError:
        return None
    record.update(
        pid=pid,
        started=started,
        updated=updated,
        interval=interval,
        rss_bytes=rss,
        usage_bytes=usage,
        limit_bytes=limit,
        usage_fraction=round(fraction, 4),
        pressure=pressure,
    )
    return record


@dataclass
class ContainerView:
    """The live workers of one container, each as a dict of figures, by pid."""

    directory: str | None
    """Where the figures were read; ``None`` when the container has no shared directory."""
    workers: list[dict[str, Any]] = field(default_factory=list)
    """One dict per live worker: ``pid``, ``rss_bytes``, ``pressure``, ``usage_fraction``,
    ``status``, ``suspected_leaks``, ``shed_features``, ``draining``, ``updated``, ``stale``
    (no sample for a while), ``this`` (the process that read the view), and whatever else
    the worker's health holds in figures."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"directory": self.directory, "workers": [dict(w) for w in self.workers]}


def _stale_after(interval: float) -> float:
    # A sampler that misses five rounds (and at least 15 s) is blocked, not merely late.
    return max(5 * interval, 15.0)


def read_container(
    directory: str | None,
    *,
    this: Mapping[str, Any] | None = None,
    remove_dead: bool = False,
    now: float | None = None,
) -> ContainerView:
    """Read the figures of every live worker published in ``directory``.

    ``this`` is the reading process's own record, fresher than its file (it replaces it).
    Files of processes that no longer run are skipped, and deleted with ``remove_dead``.
    Never raises: an unreadable file or directory is left out.
    """
    now = time.time() if now is None else now
    workers: dict[int, dict[str, Any]] = {}
    names: list[str] = []
    if directory is not None:
        with contextlib.suppress(OSError):
            names = os.listdir(directory)
    for name in names:
        match = _FILE.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        path = os.path.join(directory, name)  # type: ignore[arg-type]
        page = _read_page(path)
        record = _parse(page) if page is not None else None
        alive = _container.process_alive(pid, record["started"] if record else None)
        if not alive:
            if remove_dead:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            continue
        if record is None or record["pid"] != pid:
            continue
        record["stale"] = now - float(record["updated"]) > _stale_after(record["interval"])
        record["this"] = False
        workers[pid] = record
    if this is not None:
        mine = dict(this)
        mine["this"], mine["stale"] = True, False
        workers[int(mine["pid"])] = mine
    return ContainerView(directory, [workers[pid] for pid in sorted(workers)])


def this_worker(guard: Guard) -> dict[str, Any]:
    """The calling process's own record, read live from ``guard`` (as it would publish it)."""
    latest = guard.history.latest()
    record = worker_health(guard)
    record.update(pid=os.getpid(), started=_started_here(), interval=guard.config.interval)
    record["updated"] = latest.wall if latest is not None else time.time()
    return record


def container_view(guard: Guard | None, setting: str | None = None) -> ContainerView:
    """The view from this process: every live worker of its container, this one read live.

    ``setting`` is as for :func:`runtime_guard._container.container_dir`; by default the
    directory this process publishes in, else the one the environment names.
    """
    publisher = guard.component(ContainerPublisher.name) if guard is not None else None
    directory = getattr(publisher, "directory", None)
    if directory is None:
        if setting is None:
            setting = getattr(publisher, "setting", None)
        directory = _container.container_dir(setting, create=False)
    return read_container(directory, this=this_worker(guard) if guard is not None else None)
