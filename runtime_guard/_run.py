"""``runtime-guard run``: start a program with the guard installed in it, pass its fate back."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from runtime_guard._bootstrap import BOOTSTRAP_DIR_ENV, SITECUSTOMIZE_SOURCE
from runtime_guard.config import Config, env_name

__all__ = ["FORWARDED_SIGNALS", "child_environment", "run_command"]

FORWARDED_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
    if hasattr(signal, name)
)
"""Signals the wrapper passes on to the child (servers use HUP, USR1/2, WINCH for control)."""


def child_environment(
    bootstrap_dir: str, options: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """Return the child's environment: our ``sitecustomize`` first on the path, options set.

    Options given on the command line override ``RUNTIME_GUARD_*`` variables already set.
    """
    env = dict(environ)
    for name, value in options.items():
        env[env_name(name)] = value
    existing = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = bootstrap_dir + (os.pathsep + existing if existing else "")
    env[BOOTSTRAP_DIR_ENV] = bootstrap_dir
    return env


def _terminal_delivered_sigint() -> bool:
    # Ctrl-C reaches the whole foreground process group, the child included; passing it on
    # as well would interrupt the child twice (e.g. abort a graceful shutdown).
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def run_command(
    command: Sequence[str], options: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> int:
    """Run ``command`` with the guard installed at its start-up; return its exit status.

    ``options`` map option names to their string values. They are validated here first, so
    a bad one fails before the child starts. A child killed by a signal gives ``128 + N``
    as a shell does. Raises :class:`~runtime_guard.ConfigError` and :class:`OSError`
    (command not found).
    """
    environ = os.environ if environ is None else environ
    bootstrap_dir = tempfile.mkdtemp(prefix="runtime-guard-run-")
    try:
        env = child_environment(bootstrap_dir, options, environ)
        Config.from_options({}, environ=env)
        with open(os.path.join(bootstrap_dir, "sitecustomize.py"), "w", encoding="utf-8") as f:
            f.write(SITECUSTOMIZE_SOURCE)
        child = subprocess.Popen(list(command), env=env)
        previous: dict[signal.Signals, Any] = {}

        def forward(signum: int, frame: FrameType | None) -> None:
            if signum == signal.SIGINT and _terminal_delivered_sigint():
                return
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

        # Handlers can only be set from the main thread; elsewhere the child still runs.
        if threading.current_thread() is threading.main_thread():
            for sig in FORWARDED_SIGNALS:
                previous[sig] = signal.signal(sig, forward)
        try:
            while True:
                try:
                    returncode = child.wait()
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                    continue
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 128 - returncode if returncode < 0 else returncode
    finally:
        shutil.rmtree(bootstrap_dir, ignore_errors=True)
