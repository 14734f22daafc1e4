"""The workers of one container agree on who recycles: a file lock and a file per worker.

Workers that share a memory limit (one cgroup) read the same usage, so they all see the
same prediction at the same moment. Each publishes its own growth in a small file in the
``recycling`` directory of the container's shared directory
(:func:`runtime_guard._container.container_dir`, where the workers' figures are published
too); the one that grew most recycles, and only while it holds an exclusive ``flock`` on
that directory's lock file. The kernel releases that lock when the process exits, however
it exits, so the lock is held exactly until the worker's memory is back, and a worker that
crashed mid-recycle never blocks the others. ``flock`` works the same on a tmpfs, an
overlay or a disk file system, so the shared directory may be in any of them.

A file lock rather than the server's master (gunicorn's hooks, uvicorn's supervisor,
billiard's pool): it works the same for every server, and for several servers sharing one
container (gunicorn beside a Celery worker), which no single master can see.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from runtime_guard._container import container_dir, process_alive

__all__ = ["SUBDIRECTORY", "Coordinator", "Peer", "limit_group", "recycling_directory"]

_log = logging.getLogger("runtime_guard")

STALE_SECONDS = 60.0
"""A worker's file not rewritten for this long belongs to a process that is gone."""

SUBDIRECTORY = "recycling"
"""The directory, in the container's shared one, that holds the files of this module."""

_SUFFIX = ".worker"
_RECORD = 256
_VICTIM = "victim.json"
_DRAINS = "drains.json"
_DRAINS_KEPT = 8


def recycling_directory(group: str | None = None, setting: str | None = None) -> str | None:
    """Where the workers limited together coordinate their recycles, or ``None`` when the
    container's shared directory is off or unusable (each worker then decides alone).

    ``group`` names the workers limited together when that is not the whole container
    (see :func:`limit_group`); ``setting`` is passed to
    :func:`~runtime_guard._container.container_dir`.
    """
    base = container_dir(setting)
    if base is None:
        return None
    return os.path.join(base, SUBDIRECTORY, *([group] if group else []))


def limit_group(sources: dict[str, str]) -> str | None:
    """Which workers share this worker's limit, from its guard's ``sources``.

    ``None`` (the whole container) when usage is a cgroup's working set: every process of
    the container counts against it. When usage is the process's own RSS (no cgroup limit;
    ``process_limit`` or ``memory_limit`` per process), only the workers of one server take
    turns: the children of one parent. Unrelated servers that share a host's cgroup then
    never wait for each other's recycles.
    """
    if "working set" in sources.get("usage", ""):
        return None
    return f"parent-{os.getppid()}"


@dataclass(frozen=True)
class Peer:
    """What one worker of the container published about itself."""

    pid: int
    started: float
    """``time.time()`` when its guard started."""
    growth: int
    """Bytes its RSS grew since its baseline."""
    rising: int
    """Bytes its RSS floor rose over the recent window (about zero for a flat worker)."""
    updated: float
    """``time.time()`` when it wrote this."""

    @classmethod
    def from_dict(cls, data: Any) -> Peer | None:
        try:
            return cls(
                int(data["pid"]),
                float(data["started"]),
                int(data["growth"]),
                int(data["rising"]),
                float(data["updated"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


class Coordinator:
    """This worker's side of the agreement: publish, look at the others, take a lock.

    Two locks, each held by one worker of the container at a time: ``recycle`` (held from
    the decision until the worker exits) and ``diagnosis`` (held while a leak diagnosis
    window is open: tracemalloc slows the traced worker's requests several times over, so
    the others keep serving at full speed meanwhile).
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        """The runtime directory shared with the other workers."""
        self._fds: dict[str, int] = {}
        self._seen_holders: dict[str, int] = {}
        self._own_fd = -1
        self._failed = False
        self._pid = os.getpid()

    def holding(self, name: str = "recycle") -> bool:
        """Whether this process holds lock ``name``."""
        return name in self._fds

    def _ensure(self) -> bool:
        if self._failed:
            return False
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            return True
        except OSError as exc:
            self._failed = True
            _log.warning(
                "runtime_guard: cannot use %s to coordinate recycling with other workers "
                "(%s); this worker decides alone",
                self.directory,
                exc,
            )
            return False

    def _write(self, name: str, data: dict[str, Any]) -> None:
        path = os.path.join(self.directory, name)
        temporary = f"{path}.{self._pid}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(temporary, path)

    def publish(self, started: float, growth: int, rising: int) -> None:
        """Write this worker's figures for the others: one ``pwrite`` to a file held open.

        A fixed-size record rewritten in place, not a new file renamed over the old: this
        runs every second while memory is high. A reader that catches it half-written gets
        invalid JSON and skips it for that look.
        """
        if not self._ensure():
            return
        data = {"pid": self._pid, "started": started, "growth": growth, "rising": rising}
        data["updated"] = time.time()
        payload = json.dumps(data).encode().ljust(_RECORD)
        try:
            if self._own_fd >= 0 and os.fstat(self._own_fd).st_nlink == 0:
                # Removed as stale (this process was stopped for a minute): write anew.
                os.close(self._own_fd)
                self._own_fd = -1
            if self._own_fd < 0:
                path = os.path.join(self.directory, f"{self._pid}{_SUFFIX}")
                self._own_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.pwrite(self._own_fd, payload, 0)
        except OSError as exc:
            self._failed = True
            _log.warning("runtime_guard: cannot publish recycling figures: %s", exc)

    def peers(self) -> list[Peer]:
        """Every live worker's latest figures, this one's included; stale files are removed."""
        if not self._ensure():
            return []
        found = []
        now = time.time()
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        for name in names:
            if not name.endswith(_SUFFIX):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, "rb") as f:
                    peer = Peer.from_dict(json.loads(f.read(_RECORD * 2).rstrip(b" \0")))
            except (OSError, ValueError):
                continue
            if peer is None:
                continue
            if not process_alive(peer.pid) or now - peer.updated > STALE_SECONDS:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            found.append(peer)
        return found

    def name_victim(self, pid: int, reason: str) -> None:
        """Tell the worker ``pid`` that it is due: the others see the trend it may not yet."""
        if not self._ensure():
            return
        data = {"victim": pid, "by": self._pid, "at": time.time(), "reason": reason}
        with contextlib.suppress(OSError):
            self._write(_VICTIM, data)

    def named(self, fresh: float) -> dict[str, Any] | None:
        """The latest victim named (``victim``, ``by``, ``at``, ``reason``) if younger than
        ``fresh`` seconds, else ``None``."""
        if self._failed:
            return None
        try:
            with open(os.path.join(self.directory, _VICTIM), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("at"), (int, float)):
            return None
        return data if time.time() - data["at"] < fresh else None

    def try_lock(self, reason: str, name: str = "recycle") -> bool:
        """Take lock ``name`` without waiting; held until released or this process exits."""
        if name in self._fds:
            return True
        if not self._ensure():
            return True  # alone: nothing to agree with
        path = os.path.join(self.directory, f"{name}.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            _log.warning("runtime_guard: cannot open %s (%s); going on without it", path, exc)
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fds[name] = fd
        with contextlib.suppress(OSError):
            self._write(f"{name}.json", {"pid": self._pid, "since": time.time(), "reason": reason})
        return True

    def holder(self, name: str = "recycle") -> dict[str, Any] | None:
        """Who holds lock ``name`` (``pid``, ``since``, ``reason``), or ``None`` when nobody."""
        if self._failed:
            return None
        path = os.path.join(self.directory, f"{name}.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # held: read who holds it
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
        try:
            with open(os.path.join(self.directory, f"{name}.json"), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {"pid": None, "since": None, "reason": ""}
        return data if isinstance(data, dict) else None

    def last_holder(self, name: str = "recycle") -> dict[str, Any] | None:
        """Who took lock ``name`` last (``pid``, ``since``, ``reason``), held or not."""
        try:
            with open(os.path.join(self.directory, f"{name}.json"), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def holder_changed(self, name: str = "recycle") -> dict[str, Any] | None:
        """Who took lock ``name`` last, when that changed since the previous call (one
        ``stat`` when it did not); ``None`` otherwise."""
        try:
            stamp = os.stat(os.path.join(self.directory, f"{name}.json")).st_mtime_ns
        except OSError:
            return None
        if self._seen_holders.get(name) == stamp:
            return None
        self._seen_holders[name] = stamp
        return self.last_holder(name)

    def record_drain(self, since: float, seconds: float) -> None:
        """Remember that the recycle begun at ``since`` gave its memory back ``seconds`` later."""
        drains = self.drains()
        drains[f"{since:.3f}"] = round(seconds, 3)
        recent = dict(sorted(drains.items())[-_DRAINS_KEPT:])
        with contextlib.suppress(OSError):
            self._write(_DRAINS, recent)

    def drains(self) -> dict[str, float]:
        """The drains measured in the container, by when their recycle began."""
        try:
            with open(os.path.join(self.directory, _DRAINS), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}

    def release(self, name: str = "recycle") -> None:
        """Give lock ``name`` up while still alive."""
        fd = self._fds.pop(name, -1)
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def after_fork(self) -> None:
        """In a forked child: the parent's locks and file are the parent's."""
        if self._own_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._own_fd)
            self._own_fd = -1
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            # Closing the child's copy leaves the parent's lock in place (flock locks belong
            # to the open file, which the parent still has open).
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pid = os.getpid()

    def close(self) -> None:
        """Remove this worker's file and give up its locks."""
        for name in list(self._fds):
            self.release(name)
        if self._own_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._own_fd)
            self._own_fd = -1
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.directory, f"{self._pid}{_SUFFIX}"))
