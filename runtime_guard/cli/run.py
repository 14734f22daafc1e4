"""``runtime-guard run``: start a program with the guard installed in it, pass its fate back."""

from __future__ import annotations

import argparse
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

from runtime_guard.cli._common import err
from runtime_guard.cli.bootstrap import BOOTSTRAP_DIR_ENV, SITECUSTOMIZE_SOURCE
from runtime_guard.config import Config, ConfigError, env_name

__all__ = ["FORWARDED_SIGNALS", "child_environment", "command", "register", "run_command"]

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


def register(sub: Any) -> None:
    """Add the subcommand to the ``runtime-guard`` parser."""
    run = sub.add_parser(
        "run",
        help="run a program with the guard installed",
        description="Run CMD with the guard installed at its start-up (through a "
        "sitecustomize on a temporary path; an existing sitecustomize still runs). "
        "Options become RUNTIME_GUARD_* variables; the exit code is CMD's.",
        usage="runtime-guard run [options] -- CMD [ARG...]",
    )
    for name, default, doc in Config.describe():
        run.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="VALUE",
            help=f"{doc} ({env_name(name)}; default {default})".replace("%", "%%"),
        )
    run.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments")


def command(args: argparse.Namespace) -> int:
    """Run ``runtime-guard run``."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        err("run: no command given; usage: runtime-guard run [options] -- CMD [ARG...]")
        return 2
    options = {
        name: getattr(args, name)
        for name, _, _ in Config.describe()
        if getattr(args, name) is not None
    }
    try:
        Config.from_options(options)  # names the flag, not the variable, in the error
    except ConfigError as exc:
        name, sep, rest = str(exc).partition("=")
        err(f"run: --{name.replace('_', '-')}{sep}{rest}")
        return 2
    try:
        return run_command(command, options)
    except ConfigError as exc:
        err(f"run: {exc}")
        return 2
    except OSError as exc:
        err(f"run: cannot start {command[0]!r}: {exc.strerror or exc}")
        return 127
