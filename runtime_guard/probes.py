"""Memory readings the way the OOM killer sees them, from files under an injectable root.

Every reader takes ``root`` (``"/"`` on a real machine) so tests can point it at a fixture
tree holding ``proc/self/cgroup``, ``proc/self/mountinfo``, ``proc/meminfo``,
``proc/self/statm`` and ``sys/fs/cgroup/...`` for cgroup v1, v2, nested, unlimited and
unreadable cases.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "CgroupMemory",
    "MemoryProbe",
    "Reading",
    "RssReader",
    "RuntimeProbe",
    "RuntimeReading",
    "find_cgroup_memory",
    "physical_memory",
    "rlimit_as",
]

_log = logging.getLogger("runtime_guard")

# cgroup v1 writes PAGE_COUNTER_MAX * page size (about 2**63) for "no limit"; anything
# this large cannot be a real limit on any machine.
_V1_UNLIMITED = 1 << 62

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _join(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


class _HeldFile:
    """A file kept open and re-read with one ``pread``: no open/close per sample."""

    def __init__(self, path: str, size: int = 4096) -> None:
        self.path = path
        self._size = size
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def read(self) -> bytes:
        return os.pread(self._fd, self._size, 0)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


class RssReader:
    """This process's resident set size in bytes.

    On Linux one ``pread`` of ``/proc/self/statm`` held open (about a third of the cost of
    ``psutil.Process().memory_info()``, which opens and parses the file each time); psutil
    elsewhere or when statm cannot be read.
    """

    def __init__(self, root: str = "/") -> None:
        self._root = root
        self._statm: _HeldFile | None = None
        self._psutil_process: object | None = None
        self.source = "unavailable"
        self.reopen()

    def reopen(self) -> None:
        """Open the source again; needed after ``fork()``, where ``/proc/self`` was the parent."""
        self.close()
        try:
            self._statm = _HeldFile(_join(self._root, "/proc/self/statm"), 256)
            self._statm_rss()
            self.source = "/proc/self/statm"
            return
        except (OSError, ValueError, IndexError):
            self.close()
        try:
            import psutil

            self._psutil_process = psutil.Process()
            self.source = "psutil"
        except Exception:  # psutil missing or broken: the guard reads nothing, says so
            self._psutil_process = None
            self.source = "unavailable"

    def _statm_rss(self) -> int:
        assert self._statm is not None
        return int(self._statm.read().split(None, 2)[1]) * _PAGE_SIZE

    def read(self) -> int:
        """Return RSS in bytes; raises ``OSError`` when no source can be read."""
        statm = self._statm  # one local reference: another thread may switch sources
        if statm is not None:
            try:
                return int(statm.read().split(None, 2)[1]) * _PAGE_SIZE
            except (OSError, ValueError, IndexError):
                if self._statm is statm:
                    _log.warning(
                        "runtime_guard: %s unreadable, falling back to psutil", self.source
                    )
                    self._statm = None
                    statm.close()
                    self.reopen_psutil()
        process = self._psutil_process
        if process is not None:
            return int(process.memory_info().rss)  # type: ignore[attr-defined]
        raise OSError("no RSS source: /proc/self/statm and psutil both unavailable")

    def reopen_psutil(self) -> None:
        try:
            import psutil

            self._psutil_process = psutil.Process()
            self.source = "psutil"
        except Exception:
            self._psutil_process = None
            self.source = "unavailable"

    def close(self) -> None:
        if self._statm is not None:
            self._statm.close()
            self._statm = None


@dataclass
class CgroupMemory:
    """The cgroup whose memory limit is the tightest on this process's path."""

    version: int
    """1 or 2."""
    path: str
    """Directory of that cgroup (under ``root``)."""
    limit: int
    """Its limit in bytes."""

    def __post_init__(self) -> None:
        if self.version == 2:
            usage, self._stat_key = "memory.current", b"inactive_file"
        else:
            usage, self._stat_key = "memory.usage_in_bytes", b"total_inactive_file"
        self._usage = _HeldFile(os.path.join(self.path, usage), 64)
        self._stat = _HeldFile(os.path.join(self.path, "memory.stat"), 65536)
        self._inactive = 0
        self._stat_usage: int | None = None
        self._stat_age = 0

    @property
    def source(self) -> str:
        return f"cgroup v{self.version} {self.path}"

    def working_set(self) -> int:
        """Usage less reclaimable ``inactive_file`` page cache, as the OOM killer counts it.

        The kernel builds ``memory.stat`` anew on each read (7 us under cgroup v1 here,
        most of a sample's cost; the usage file takes under 1 us). It is read again when
        usage moved by more than :data:`STAT_MOVE` of the limit since it was last read, and
        at least every :data:`STAT_EVERY` readings: page cache that comes or goes moves
        usage too, and what only ages from active to inactive counts a few seconds late.
        """
        usage = int(self._usage.read())
        last = self._stat_usage
        self._stat_age += 1
        if (
            last is None
            or self._stat_age >= STAT_EVERY
            or abs(usage - last) > self.limit * STAT_MOVE
        ):
            stat = self._stat.read()
            found = _stat_value(stat, self._stat_key)
            if found is None and self._stat_key != b"inactive_file":
                found = _stat_value(stat, b"inactive_file")
            self._inactive = found or 0
            self._stat_usage, self._stat_age = usage, 0
        return max(usage - self._inactive, 0)

    def close(self) -> None:
        self._usage.close()
        self._stat.close()


STAT_EVERY = 5
"""``memory.stat`` is read at least on one working-set reading in this many."""

STAT_MOVE = 0.005
"""...and whenever usage moved by more than this share of the limit since its last read."""


def _stat_value(stat: bytes, key: bytes) -> int | None:
    """The value of ``key`` in a ``memory.stat`` text (one ``key value`` a line)."""
    if stat.startswith(key + b" "):
        start = len(key) + 1
    else:
        at = stat.find(b"\n" + key + b" ")
        if at < 0:
            return None
        start = at + len(key) + 2
    end = stat.find(b"\n", start)
    try:
        return int(stat[start:] if end < 0 else stat[start:end])
    except ValueError:
        return None


def _cgroup_dirs(root: str) -> list[tuple[int, str, str]]:
    """Return ``(version, cgroup dir, mount point)`` for the memory hierarchy of this process."""
    cgroup_text = _read_text(_join(root, "/proc/self/cgroup"))
    mounts_text = _read_text(_join(root, "/proc/self/mountinfo"))
    if not cgroup_text or not mounts_text:
        return []
    v1_path = v2_path = None
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "memory" in parts[1].split(","):
            v1_path = parts[2]
    found = []
    for line in mounts_text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if not sep or len(fields) < 5 or len(extra) < 3:
            continue
        mount_root, mount_point, fstype = fields[3], fields[4], extra[0]
        if fstype == "cgroup" and v1_path is not None and "memory" in extra[2].split(","):
            version, path = 1, v1_path
        elif fstype == "cgroup2" and v2_path is not None:
            version, path = 2, v2_path
        else:
            continue
        # A container without its own cgroup namespace sees its host path in
        # /proc/self/cgroup but has that cgroup mounted as the root.
        relative = path[len(mount_root) :] if path.startswith(mount_root) else path
        base = _join(root, mount_point)
        directory = os.path.normpath(_join(base, relative))
        if not os.path.isdir(directory):
            directory = base
        found.append((version, directory, base))
    # v1's memory controller, when mounted, is the one that enforces limits (hybrid hosts).
    found.sort(key=lambda item: item[0])
    return found


def _limit_in(version: int, directory: str) -> int | None:
    name = "memory.max" if version == 2 else "memory.limit_in_bytes"
    text = _read_text(os.path.join(directory, name))
    if text is None:
        return None
    text = text.strip()
    if text == "max" or not text.isdigit():
        return None
    value = int(text)
    if version == 1 and value >= _V1_UNLIMITED:
        return None
    return value


def find_cgroup_memory(root: str = "/", physical: int | None = None) -> CgroupMemory | None:
    """Return the cgroup with the tightest memory limit on this process's path, or ``None``.

    A limit at or above physical RAM is no limit: the machine runs out first.
    """
    for version, directory, base in _cgroup_dirs(root):
        best: tuple[int, str] | None = None
        current = directory
        while True:
            limit = _limit_in(version, current)
            tighter = best is None or (limit is not None and limit < best[0])
            if limit is not None and (physical is None or limit < physical) and tighter:
                best = (limit, current)
            if os.path.normpath(current) == os.path.normpath(base) or len(current) <= len(base):
                break
            current = os.path.dirname(current)
        if best is not None:
            try:
                return CgroupMemory(version, best[1], best[0])
            except OSError:
                _log.warning("runtime_guard: cgroup %s has a limit but no readable usage", best[1])
    return None


def physical_memory(root: str = "/") -> int:
    """Return physical RAM in bytes (``/proc/meminfo``, else sysconf, else psutil)."""
    text = _read_text(_join(root, "/proc/meminfo"))
    if text:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        import psutil

        return int(psutil.virtual_memory().total)


def rlimit_as() -> int | None:
    """Return this process's ``RLIMIT_AS`` soft limit, or ``None`` when unlimited."""
    try:
        import resource
    except ImportError:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


@dataclass(frozen=True)
class Reading:
    """One reading of the figures pressure is computed from."""

    rss: int
    usage: int
    limit: int
    fraction: float


class MemoryProbe:
    """Reads RSS, usage and limit by the rules in shared/DESIGN.md ("What usage means")."""

    def __init__(
        self,
        root: str = "/",
        memory_limit: int | None = None,
        process_limit: int | None = None,
        rlimit: Callable[[], int | None] = rlimit_as,
    ) -> None:
        self._root = root
        self._memory_limit = memory_limit
        self._process_limit = process_limit
        self._rlimit = rlimit
        self.rss = RssReader(root)
        self._cgroup: CgroupMemory | None = None
        self.limit = 0
        self.limit_source = ""
        self.usage_source = ""
        self.discover()

    def discover(self) -> None:
        """(Re)find the limit and the usage source; cheap enough to call every few seconds."""
        physical = physical_memory(self._root) if sys.platform.startswith("linux") else None
        old = self._cgroup
        self._cgroup = find_cgroup_memory(self._root, physical) if physical else None
        if old is not None:
            old.close()
        if self._cgroup is not None:
            limit, source = self._cgroup.limit, f"{self._cgroup.source} limit"
            self.usage_source = f"{self._cgroup.source} working set"
        else:
            self.usage_source = f"process RSS ({self.rss.source})"
            rlimit = self._rlimit()
            if rlimit is not None:
                limit, source = rlimit, "RLIMIT_AS"
            else:
                limit = physical if physical else physical_memory(self._root)
                source = "physical RAM"
        if self._memory_limit is not None:
            limit, source = self._memory_limit, "memory_limit option"
        if (limit, source) != (self.limit, self.limit_source) and self.limit_source:
            _log.info("runtime_guard: memory limit now %d bytes (%s)", limit, source)
        self.limit, self.limit_source = limit, source

    @property
    def sources(self) -> dict[str, str]:
        sources = {"rss": self.rss.source, "usage": self.usage_source, "limit": self.limit_source}
        if self._process_limit is not None:
            sources["process_limit"] = "process_limit option"
        return sources

    def read(self) -> Reading:
        """Return one reading; raises ``OSError`` only when RSS itself cannot be read."""
        rss = self.rss.read()
        usage = rss
        if self._cgroup is not None:
            try:
                usage = self._cgroup.working_set()
            except (OSError, ValueError):
                _log.warning(
                    "runtime_guard: %s unreadable; measuring process RSS instead",
                    self._cgroup.source,
                )
                self._cgroup.close()
                self._cgroup = None
                self.usage_source = f"process RSS ({self.rss.source})"
        fraction = usage / self.limit if self.limit > 0 else 0.0
        if self._process_limit:
            fraction = max(fraction, rss / self._process_limit)
        return Reading(rss, usage, self.limit, fraction)

    def reopen(self) -> None:
        """Reopen held files; the guard calls this in a child after ``fork()``."""
        self.rss.reopen()
        self.discover()

    def close(self) -> None:
        self.rss.close()
        if self._cgroup is not None:
            self._cgroup.close()
            self._cgroup = None


class RuntimeReading(NamedTuple):
    """The figures of a sample that are not bytes."""

    threads: int
    """Live Python threads."""
    tasks: int
    """asyncio tasks not yet collected (pending, or finished and still referenced)."""
    fds: int
    """Open file descriptors; ``-1`` where they cannot be counted."""
    loop_lag: float | None
    """Worst event-loop lag in seconds since the last reading; ``None`` with no loop watched."""


# Counting by listing the directory costs tens of microseconds and grows with the count;
# where that is the only way, it is done on one reading in this many.
_FD_LIST_EVERY = 10


class RuntimeProbe:
    """Threads, asyncio tasks, file descriptors and loop lag: a few microseconds a reading.

    File descriptors: since Linux 6.2 the size of the ``/proc/self/fd`` directory is their
    number; it is read with one ``fstat`` of the directory held open (under a microsecond,
    against 2 us for a ``stat`` by path, 20 us for listing the directory and 10 to 30 us
    for a psutil memory read). Older kernels say 0 there, and the directory is listed on
    one reading in ten. Tasks: the length of asyncio's own registry of tasks, read without
    importing asyncio. Loop lag: what :mod:`runtime_guard.looplag` measured, when loaded.
    """

    def __init__(self, root: str = "/") -> None:
        self._fd_dir = _join(root, "/proc/self/fd")
        self._dir = -1
        self._by_size = True
        self._fds = -1
        self._readings = 0
        self.reopen()

    def read(self) -> RuntimeReading:
        """One reading now; never raises (a figure that cannot be read is ``-1``/``None``)."""
        modules = sys.modules
        tasks = 0 if "asyncio.tasks" not in modules else self.tasks()
        lag = None if "runtime_guard.looplag" not in modules else self.loop_lag()
        return RuntimeReading(threading.active_count(), tasks, self.fds(), lag)

    def fds(self) -> int:
        """Open file descriptors of this process, the probe's own included (``-1`` when they
        cannot be counted)."""
        if self._by_size and self._dir >= 0:
            try:
                return os.fstat(self._dir).st_size
            except OSError:
                self._by_size = False
        self._readings += 1
        if self._fds < 0 or self._readings % _FD_LIST_EVERY == 0:
            try:
                # Listing opens one descriptor of its own for the directory.
                self._fds = max(len(os.listdir(self._fd_dir)) - 1, 0)
            except OSError:
                self._fds = -1
        return self._fds

    @staticmethod
    def tasks() -> int:
        """asyncio tasks of every loop not yet collected; 0 while asyncio is not imported."""
        module = sys.modules.get("asyncio.tasks")
        if module is None:
            return 0
        count = 0
        # 3.11: _all_tasks; 3.12 and later: _scheduled_tasks (a WeakSet) and _eager_tasks.
        for name in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):
            registry = getattr(module, name, None)
            if registry is not None:
                with contextlib.suppress(Exception):  # resized by the loop's thread meanwhile
                    count += len(registry)
        return count

    @staticmethod
    def loop_lag() -> float | None:
        """Worst lag of the watched event loops since the last call, when any is watched."""
        looplag = sys.modules.get("runtime_guard.looplag")
        if looplag is None:
            return None
        try:
            lag: float | None = looplag.default_monitor.take()
        except Exception:
            return None
        return lag

    def reopen(self) -> None:
        """Open the directory again; needed after ``fork()``, where ``/proc/self`` was the
        parent's."""
        self.close()
        self._fds, self._readings = -1, 0
        try:
            self._dir = os.open(self._fd_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            # Standard input, output and error and the directory itself are open: a size
            # of 0 is an older kernel's answer, not a process without descriptors.
            self._by_size = os.fstat(self._dir).st_size > 0
        except OSError:
            self._dir, self._by_size = -1, False

    def close(self) -> None:
        """Close the held directory."""
        if self._dir >= 0:
            with contextlib.suppress(OSError):
                os.close(self._dir)
            self._dir = -1
