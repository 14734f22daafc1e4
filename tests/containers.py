"""Real memory cgroups for tests: a hard limit, processes started inside, OOM kills counted.

:func:`start_container` makes a child memory cgroup of this process's own cgroup, under a
directory of its own (``runtime-guard-tests``), and sets a hard limit on it: cgroup v2
``memory.max`` where the unified hierarchy is mounted with the memory controller
enabled for children, else cgroup v1 ``memory.limit_in_bytes``. ``Container.popen`` starts
a program inside it (the pid is written to ``cgroup.procs`` before ``exec``, so everything
the program forks is inside too); the kernel's OOM killer is the judge, and
``Container.oom_kills`` counts its kills (``memory.events`` on v2, ``memory.oom_control``
on v1). ``stop()`` kills what is left and removes the cgroup.

Where no writable memory controller exists (not root, no cgroup mounted, a v2 parent that
cannot delegate the controller) :func:`start_container` raises :class:`Unavailable`
with the reason, so fixtures turn it into a skip.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Container", "Unavailable", "find_memory_controller", "start_container"]

OWN_DIRECTORY = "runtime-guard-tests"
"""The directory under this process's cgroup that holds every container a test makes."""

_counter = itertools.count()


class Unavailable(RuntimeError):
    """No writable memory cgroup here; the message says why."""


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _own_paths() -> tuple[str | None, str | None]:
    """This process's cgroup path in the v1 memory hierarchy and in the unified one."""
    v1 = v2 = None
    for line in _read("/proc/self/cgroup").splitlines():
        number, controllers, path = line.split(":", 2)
        if number == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v1, v2


def _mounts() -> list[tuple[str, str, str, list[str]]]:
    """``(fstype, mount root, mount point, super options)`` of every cgroup mount."""
    found = []
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(fields) >= 5 and len(extra) >= 3 and extra[0] in ("cgroup", "cgroup2"):
            found.append((extra[0], fields[3], fields[4], extra[2].split(",")))
    return found


def _join(mount_root: str, mount_point: str, path: str) -> str:
    relative = path[len(mount_root) :] if path.startswith(mount_root) else path
    return os.path.normpath(os.path.join(mount_point, relative.lstrip("/")))


def find_memory_controller() -> tuple[int, str]:
    """``(version, directory)`` where containers are made; raises :class:`Unavailable`.

    The directory is :data:`OWN_DIRECTORY` under this process's own memory cgroup. v2 is
    used when the memory controller can be enabled for it, else v1.
    """
    if os.geteuid() != 0:
        raise Unavailable("memory cgroups need root to create and limit a child cgroup")
    try:
        v1_path, v2_path = _own_paths()
        mounts = _mounts()
    except OSError as exc:
        raise Unavailable(f"cannot read this process's cgroups: {exc}") from None
    reasons = []
    for fstype, root, point, _options in mounts:
        if fstype != "cgroup2" or v2_path is None:
            continue
        own = _join(root, point, v2_path)
        try:
            if "memory" not in _read(os.path.join(own, "cgroup.controllers")).split():
                reasons.append(f"cgroup v2 at {point} has no memory controller")
                continue
            base = os.path.join(own, OWN_DIRECTORY)
            os.makedirs(base, exist_ok=True)
            # v2 delegates a controller to children only through subtree_control, and only
            # from a cgroup without processes of its own: the parent is ours, and empty.
            if "memory" not in _read(os.path.join(base, "cgroup.subtree_control")).split():
                _write(os.path.join(base, "cgroup.subtree_control"), "+memory")
            return 2, base
        except OSError as exc:
            reasons.append(f"cgroup v2 at {point}: cannot enable the memory controller ({exc})")
    for fstype, root, point, options in mounts:
        if fstype != "cgroup" or "memory" not in options or v1_path is None:
            continue
        base = os.path.join(_join(root, point, v1_path), OWN_DIRECTORY)
        try:
            os.makedirs(base, exist_ok=True)
            return 1, base
        except OSError as exc:
            reasons.append(f"cgroup v1 memory at {point} is not writable ({exc})")
    if not reasons:
        reasons.append("no cgroup memory controller is mounted")
    raise Unavailable("; ".join(reasons))


@dataclass
class Container:
    """A memory cgroup with a hard limit, as a container runtime would make one."""

    version: int
    """1 or 2."""
    path: str
    """The cgroup's directory."""
    limit: int
    """Its hard limit in bytes."""

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def popen(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdout: Any = None,
        stderr: Any = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` inside the container: a shell joins it, then ``exec``\\ s them.

        Through a shell rather than ``preexec_fn``, which is unsafe in a process with
        threads (the test's own, the guard's).
        """
        join = f'echo $$ > {shlex.quote(self._file("cgroup.procs"))} && exec "$@"'
        return subprocess.Popen(
            ["/bin/sh", "-c", join, "sh", *args],
            env=None if env is None else dict(env),
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )

    def pids(self) -> list[int]:
        """Processes inside now."""
        try:
            return [int(p) for p in _read(self._file("cgroup.procs")).split()]
        except OSError:
            return []

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer killed in this cgroup so far."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in _read(self._file(name)).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def usage(self) -> int:
        """Memory charged to the cgroup now, page cache included, in bytes."""
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        return int(_read(self._file(name)))

    def peak(self) -> int | None:
        """The most memory ever charged to the cgroup, where the kernel keeps it."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int(_read(self._file(name)))
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """Kill every process left inside and remove the cgroup."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if not pids:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes {pids} did not leave {self.path}")
            time.sleep(0.05)
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                # The last process's memory is uncharged a moment after it is reaped.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def start_container(limit: int, name: str = "container") -> Container:
    """Make a memory cgroup with a hard ``limit`` (bytes); raises :class:`Unavailable`."""
    version, base = find_memory_controller()
    path = os.path.join(base, f"{name}-{os.getpid()}-{next(_counter)}")
    try:
        os.mkdir(path)
        if version == 2:
            _write(os.path.join(path, "memory.max"), str(limit))
            # No swap: a container runtime gives none by default, and the kernel must kill
            # at the limit, not page out.
            with contextlib.suppress(OSError):
                _write(os.path.join(path, "memory.swap.max"), "0")
        else:
            _write(os.path.join(path, "memory.limit_in_bytes"), str(limit))
            with contextlib.suppress(OSError):
                _write(os.path.join(path, "memory.memsw.limit_in_bytes"), str(limit))
            with contextlib.suppress(OSError):
                _write(os.path.join(path, "memory.swappiness"), "0")
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.rmdir(path)
        raise Unavailable(f"cannot make a memory cgroup with a limit at {path}: {exc}") from None
    return Container(version, path, limit)
