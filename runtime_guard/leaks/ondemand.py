"""Diagnosis on demand: a signal, an HTTP route and ``runtime-guard diagnose PID``.

An operator whose pod lacks ``ptrace`` (memray attach and py-spy need it) can still ask a
running process for a leak report. Each way in starts :meth:`Guard.diagnose
<runtime_guard.guard.Guard.diagnose>` on a short-lived thread of its own and returns at
once: the report is written to ``report_dir`` and logged with its path.

``SIGUSR2`` is handled only where nothing else handles it: the guard never takes a signal
over from the host, and a handler the host sets later simply replaces the guard's (that is
also how to switch it off). gunicorn's master uses SIGUSR2 to re-exec itself; its workers
reset their handlers after ``post_fork``, so the gunicorn integration installs the handler
again in ``post_worker_init``. Where it is installed, the guard
leaves a marker file, ``<tmp>/runtime-guard-<uid>/<pid>.json``, naming the process's
``report_dir``: ``runtime-guard diagnose PID`` signals only a process that has one, so it
never sends SIGUSR2 to a process it would kill or re-exec.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import stat
import tempfile
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime_guard.guard import Guard

__all__ = [
    "SIGNAL",
    "diagnose_in_background",
    "install_signal",
    "marker_dir",
    "marker_path",
    "read_marker",
    "uninstall_signal",
]

_log = logging.getLogger("runtime_guard")

_installed: dict[str, Any] = {}
_running = threading.Lock()


def marker_dir() -> str:
    """The directory of the markers of this user's processes."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, f"runtime-guard-{os.getuid()}")


def marker_path(pid: int) -> str:
    """The marker of process ``pid``."""
    return os.path.join(marker_dir(), f"{pid}.json")


def _own_directory(directory: str) -> bool:
    """True when ``directory`` is this user's and no one else may write in it."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def read_marker(pid: int) -> dict[str, Any] | None:
    """The marker of ``pid`` (``{"pid", "signal", "report_dir"}``), or None."""
    if not _own_directory(marker_dir()):
        return None
    try:
        with open(marker_path(pid), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("pid") == pid else None


def diagnose_in_background(guard: Guard, reason: str) -> bool:
    """Run ``guard.diagnose(reason)`` on a thread of its own; False if one runs already."""
    if not _running.acquire(blocking=False):
        return False

    def run() -> None:
        try:
            report = guard.diagnose(reason)
            if report is None:
                _log.warning("runtime_guard: diagnosis (%s): no sample taken yet", reason)
        except Exception:
            _log.exception("runtime_guard: diagnosis (%s) failed", reason)
        finally:
            _running.release()

    try:
        threading.Thread(target=run, name="runtime-guard-diagnose", daemon=True).start()
    except RuntimeError:  # no thread to be had (interpreter shutting down)
        _running.release()
        return False
    return True


def _handler(signum: int, frame: Any) -> None:
    ref = _installed.get("guard")
    guard = ref() if ref is not None else None
    if guard is not None:
        diagnose_in_background(guard, signal.Signals(signum).name)


SIGNAL = "SIGUSR2"
"""The signal that asks for a diagnosis."""


def install_signal(guard: Guard) -> bool:
    """Handle :data:`SIGNAL` with a diagnosis, if nothing else handles it.

    Only from the main thread, and only over the default disposition: a host's own handler
    is never replaced. Writes the marker file. Returns True when the handler is in place.
    """
    name = SIGNAL
    signum = getattr(signal, name, None)
    if signum is None or threading.current_thread() is not threading.main_thread():
        return False
    try:
        current = signal.getsignal(signum)
        if current is not _handler:
            if current not in (signal.SIG_DFL, None):
                _log.info("runtime_guard: %s has a handler of the host's; not taken over", name)
                return False
            signal.signal(signum, _handler)
    except (OSError, ValueError):
        return False
    _installed["signal"] = signum
    _installed["guard"] = weakref.ref(guard)
    _write_marker(name, guard.config.report_dir)
    return True


def uninstall_signal() -> None:
    """Restore the default disposition of the signal, if the guard's handler has it."""
    _installed.pop("guard", None)
    signum = _installed.pop("signal", None)
    if signum is not None:
        with contextlib.suppress(OSError, ValueError):
            if (
                threading.current_thread() is threading.main_thread()
                and signal.getsignal(signum) is _handler
            ):
                signal.signal(signum, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        os.unlink(marker_path(os.getpid()))


def _write_marker(signal_name: str, report_dir: str | None) -> None:
    directory = marker_dir()
    data = {
        "pid": os.getpid(),
        "signal": signal_name,
        "report_dir": os.path.abspath(report_dir) if report_dir else None,
    }
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not _own_directory(directory):
            _log.warning("runtime_guard: %s is not this user's own; no marker written", directory)
            return
        path = marker_path(os.getpid())
        temporary = f"{path}.{threading.get_ident()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(temporary, path)
    except OSError:
        _log.debug("runtime_guard: no marker for on-demand diagnosis", exc_info=True)
