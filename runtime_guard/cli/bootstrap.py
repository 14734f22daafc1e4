"""What ``runtime-guard run`` makes a child interpreter do at start-up, before its program.

``runtime-guard run`` writes a two-line ``sitecustomize.py`` into a temporary directory and
prepends that directory to the child's ``PYTHONPATH``. Python's ``site`` module imports
``sitecustomize`` once at start-up, so the child calls :func:`boot` before any of its own
code runs: the zero-code-change install that ``opentelemetry-instrument`` and
``ddtrace-run`` also use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

__all__ = ["BOOTSTRAP_DIR_ENV", "SITECUSTOMIZE_SOURCE", "boot"]

BOOTSTRAP_DIR_ENV = "RUNTIME_GUARD_RUN_BOOTSTRAP"
"""Set in the child's environment to the directory holding our ``sitecustomize``."""

SITECUSTOMIZE_SOURCE = """\
# Written by `runtime-guard run`: installs the guard, then runs any other sitecustomize.
try:
    from runtime_guard.cli.bootstrap import boot
except ImportError as exc:
    import sys
    sys.stderr.write(f"runtime-guard: guard not installed, runtime_guard not importable: {exc}\\n")
else:
    boot(__file__)
"""
"""The file ``runtime-guard run`` writes; it only hands over to :func:`boot`."""


def _chain(own_dir: str) -> None:
    """Import the ``sitecustomize`` that ours shadows, as if ours were not there."""
    own = os.path.realpath(own_dir)
    ours = sys.modules.pop("sitecustomize", None)
    saved_path = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != own]
    try:
        if importlib.util.find_spec("sitecustomize") is not None:
            importlib.import_module("sitecustomize")
    except Exception as exc:
        # site.py reports a failing sitecustomize the same way and carries on.
        sys.stderr.write(f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{exc!r}\n")
    finally:
        sys.path[:] = [p for p in saved_path if os.path.realpath(p or os.curdir) != own]
        if "sitecustomize" not in sys.modules and ours is not None:
            sys.modules["sitecustomize"] = ours


def boot(sitecustomize_file: str) -> None:
    """Run the shadowed ``sitecustomize`` first, then install the guard from the environment.

    Never raises: a child whose guard cannot be installed still runs its program, and says
    why on stderr.
    """
    _chain(os.path.dirname(os.path.abspath(sitecustomize_file)))
    try:
        from runtime_guard._install import install

        install()
    except Exception as exc:
        sys.stderr.write(f"runtime-guard: guard not installed: {exc}\n")
