"""Where the processes of one container meet: a directory they share, and who is alive.

Every process that runs the guard in a container (the gunicorn or uvicorn workers of one
pod, the pool processes of one Celery worker) finds the same directory here without being
told about the others: the Prometheus multiprocess directory when ``PROMETHEUS_MULTIPROC_DIR``
is set (it already belongs to one server), else a directory in the temporary directory
named after this process's cgroups, which every process of a container shares and no
process of another container has. ``RUNTIME_GUARD_CONTAINER_DIR`` names one instead, or
``off`` turns the sharing off. It is a variable of the environment, not an ``install()``
option, because every process of the container must agree on it, including those that run
no guard (``runtime-guard status`` in a shell of the container).

What is kept there belongs to the modules that use it (the per-worker figures of
:mod:`runtime_guard.container`); this module only finds, creates and checks the directory
and tells live processes from dead ones.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile

__all__ = [
    "CONTAINER_DIR_ENV",
    "OFF",
    "container_dir",
    "container_key",
    "process_alive",
    "process_started",
]

_log = logging.getLogger("runtime_guard")

CONTAINER_DIR_ENV = "RUNTIME_GUARD_CONTAINER_DIR"
"""The variable naming the container's shared directory (or ``off``)."""

OFF = "off"
"""The value that turns the shared directory off."""

_PREFIX = "runtime-guard-"


def container_key(root: str = "/") -> str:
    """A short name for this process's container: a hash of its cgroups and cgroup namespace.

    Processes of one container share both (``/proc/self/cgroup`` reads the same in each);
    containers of one pod, which share ``/dev/shm`` and may all see their cgroup as ``/``
    inside their own namespace, differ in the namespace. Outside Linux, or where neither
    can be read, the key is the same for every process of the user.
    """
    # Imported here, by the sampler's first sample: at import it would add 2-5 ms (OpenSSL)
    # to every worker's start-up.
    import hashlib

    parts: list[str] = []
    try:
        with open(os.path.join(root, "proc/self/cgroup"), encoding="utf-8") as f:
            parts.append("\n".join(sorted(f.read().split())))
    except OSError:
        parts.append("no-cgroup")
    try:
        parts.append(os.readlink(os.path.join(root, "proc/self/ns/cgroup")))
    except OSError:
        parts.append("no-namespace")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _owned_directory(path: str) -> bool:
    """Whether ``path`` is a real directory of this user that nobody else may write to.

    In a shared temporary directory another user could have made the name first (or a
    symlink to somewhere else); figures written there could be read or faked by them.
    """
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def _default_dir() -> str:
    base = tempfile.gettempdir()
    return os.path.join(base, f"{_PREFIX}{os.geteuid()}-{container_key()}")


def container_dir(setting: str | None = None, *, create: bool = True) -> str | None:
    """The directory this container's processes share, or ``None`` when there is none.

    ``setting`` is a path, ``"off"``, or ``None`` for the default
    (``RUNTIME_GUARD_CONTAINER_DIR``, else ``PROMETHEUS_MULTIPROC_DIR``, else a directory
    in the temporary directory keyed by :func:`container_key`). With ``create``
    the directory is made (mode 0700) when missing. ``None`` comes back for ``"off"`` and
    for a directory that cannot be made or is not this user's alone (logged). Never raises.
    """
    if setting is None:
        setting = os.environ.get(CONTAINER_DIR_ENV) or None
    if setting is not None and setting.strip().lower() == OFF:
        return None
    chosen = setting or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
    own = chosen is None
    path = os.path.abspath(chosen or _default_dir())
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            _log.warning("runtime_guard: container directory %s not usable: %s", path, exc)
            return None
    if not os.path.isdir(path):
        return None
    if own and not _owned_directory(path):
        # A name of ours in a shared /tmp that someone else owns or can write to.
        _log.warning(
            "runtime_guard: container directory %s is not this user's alone; not used", path
        )
        return None
    return path


def process_started(pid: int, root: str = "/") -> float | None:
    """When process ``pid`` started (seconds since the epoch), or ``None`` if it does not run."""
    # /proc directly where it exists: psutil computes the same figure from the same two
    # files, and importing it cost every worker 20 ms at start-up (it is read only here).
    try:
        with open(os.path.join(root, f"proc/{pid}/stat"), "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except FileNotFoundError:
        if os.path.isdir(os.path.join(root, "proc/self")):
            return None  # /proc is there: the process is not
    except OSError:
        pass
    else:
        boot = _boot_time(root)
        if boot is not None and len(fields) > 19:
            if fields[0] == b"Z":
                return None
            return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return _psutil_started(pid)


_BOOT: dict[str, float] = {}


def _boot_time(root: str) -> float | None:
    boot = _BOOT.get(root)
    if boot is None:
        try:
            with open(os.path.join(root, "proc/stat"), "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        boot = _BOOT[root] = float(line.split()[1])
                        break
        except (OSError, ValueError):
            return None
    return boot


def _psutil_started(pid: int) -> float | None:
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # exists, but not ours to inspect
        return 0.0


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether ``pid`` runs and, given ``started`` (its :func:`process_started`), is still
    the same process: a pid the kernel gave to a new process after the first one died
    does not count as alive. A zombie is dead: only its parent has not reaped it yet."""
    now = process_started(pid)
    if now is None:
        return False
    if started is None or now == 0.0:
        return True
    # create_time is derived from clock ticks since boot: equal to within a tick.
    return abs(now - started) < 0.05
