"""gunicorn: server hooks that give each worker its guard and recycle workers gracefully.

In ``gunicorn.conf.py``, calling the guard's hooks from your own (options from
``RUNTIME_GUARD_*`` variables)::

    from runtime_guard.integrations import gunicorn as guard_hooks

    def post_fork(server, worker):
        guard_hooks.post_fork(server, worker)
        ...  # your own post_fork

    on_starting = guard_hooks.on_starting
    child_exit = guard_hooks.child_exit

or with options in code, ``globals().update(guard_hooks.hooks(memory_limit="2GiB"))``.

``post_fork`` installs the guard in each worker. On ``restart_requested`` the worker, after
``recycle_min_lifetime`` and a random ``recycle_jitter``, sends itself SIGTERM: gunicorn's
graceful worker shutdown, which finishes in-flight requests before the worker exits and the
master starts a fresh one. ``child_exit`` and ``on_starting`` keep Prometheus multiprocess
files right when ``PROMETHEUS_MULTIPROC_DIR`` is set.

A config module holds one function per hook name, so a ``def post_fork`` of your own and
the guard's imported ``post_fork`` replace each other. ``on_starting`` checks for that and
logs a warning naming the hook: a def of yours that the guard's import replaced, or a hook
of yours that gunicorn calls instead of the guard's and that does not call it.

The guard's log propagates to the root logger, to whatever the app sets up; gunicorn's own
loggers do not take it unless you ask: ``hooks(error_log=True)``, or
:func:`use_error_log` from your own ``post_fork``.
"""

from __future__ import annotations

import ast
import functools
import glob
import importlib.util
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import runtime_guard
from runtime_guard.config import Config
from runtime_guard.guard import Guard
from runtime_guard.integrations._http import missing_extra
from runtime_guard.integrations._recycle import Recycler, attach_recycler, log_to, worker_gone

try:
    import gunicorn  # noqa: F401  (only to fail early, naming the extra)
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("gunicorn", "gunicorn", "gunicorn") from exc

__all__ = [
    "child_exit",
    "enable_recycling",
    "hooks",
    "on_starting",
    "post_fork",
    "shutdown",
    "use_error_log",
]

_log = logging.getLogger("runtime_guard")

Hook = Callable[..., None]

# Names of the hooks the guard provides, in the order gunicorn calls them.
_HOOKS = ("on_starting", "post_fork", "child_exit")
# Marks a guard hook (its value: the hook's name) and a check wrapped around a user's hook.
_MARK = "_runtime_guard_hook"
_CHECK = "_runtime_guard_check"

# How many times a guard hook ran in this process; a forked worker inherits the master's
# counts, which is how its post_fork knows whether the master ran the guard's on_starting.
_calls = dict.fromkeys(_HOOKS, 0)
_warned: set[str] = set()

# A relative config path is relative to the directory gunicorn read the config in; the
# config imports this module while it is being read, before gunicorn's ``chdir``.
_import_cwd = os.getcwd()


def shutdown(reason: str = "") -> None:
    """Shut this worker down gracefully: SIGTERM to itself, gunicorn's own worker path."""
    os.kill(os.getpid(), signal.SIGTERM)


def enable_recycling(
    guard: Guard, *, min_lifetime: float | None = None, jitter: float | None = None
) -> Recycler:
    """Recycle this worker gracefully when ``guard`` sends ``restart_requested``."""
    return attach_recycler(guard, shutdown, "gunicorn", min_lifetime=min_lifetime, jitter=jitter)


def use_error_log(server: Any) -> None:
    """Copy the guard's log to gunicorn's error log too; call it in the worker (``post_fork``).

    The records still propagate to the root logger; a root handler writing where the error
    log writes (both to stderr, say) is not written to twice. While the ``runtime_guard``
    logger has no level of its own it takes the error log's (gunicorn's ``loglevel``).
    """
    error_log = getattr(getattr(server, "log", None), "error_log", None)
    log_to(
        error_log if isinstance(error_log, logging.Logger) else logging.getLogger("gunicorn.error")
    )


def _multiproc_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def _is_guard_hook(hook: Any, name: str) -> bool:
    return getattr(hook, _MARK, None) == name


def _describe(hook: Any) -> str:
    module = getattr(hook, "__module__", None)
    name = getattr(hook, "__qualname__", None) or repr(hook)
    # gunicorn loads a config file as the module "__config__".
    return f"{name} from the config file" if module == "__config__" else f"{module}.{name}"


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        _log.warning(message, *args)


def _config_source(server: Any) -> tuple[str, str] | None:
    """``(path, source)`` of gunicorn's config file, when there is one to read."""
    try:
        location = str(server.cfg.config or "")
    except Exception:
        return None
    if location.startswith("python:"):
        spec = importlib.util.find_spec(location[len("python:") :])
        path = spec.origin if spec is not None else None
    else:
        path = location.removeprefix("file:")
        if path and not os.path.isabs(path):
            path = os.path.join(_import_cwd, path)
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as source:
        return path, source.read()


def _defined_hooks(source: str) -> dict[str, int]:
    """Hook names defined with ``def`` at the config module's top level, with their lines."""
    found: dict[str, int] = {}
    body = list(ast.parse(source).body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in _HOOKS:
            found.setdefault(node.name, node.lineno)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            # Top-level blocks still bind module names; function and class bodies do not.
            for block in ("body", "orelse", "finalbody", "handlers"):
                body.extend(getattr(node, block, ()))
        elif isinstance(node, ast.ExceptHandler):
            body.extend(node.body)
    return found


def _check_replaced_defs(server: Any) -> None:
    """Warn about a ``def`` of the config file that the guard's hook replaced."""
    found = _config_source(server)
    if found is None:
        return
    path, source = found
    for name, line in _defined_hooks(source).items():
        if _is_guard_hook(getattr(server.cfg, name, None), name):
            _warn_once(
                "replaced:" + name,
                "runtime_guard: %s defines its own %s (line %d), but gunicorn calls "
                "runtime_guard's %s, bound later in the file: yours never runs. Define yours "
                "after the import and call guard_hooks.%s(server, worker) from it.",
                os.path.basename(path),
                name,
                line,
                name,
                name,
            )


def _checked(name: str, configured: Hook) -> Hook:
    """``configured`` (the user's hook), then a warning if it did not call the guard's."""

    @functools.wraps(configured)
    def hook(server: Any, worker: Any) -> None:
        before = _calls[name]
        configured(server, worker)
        if _calls[name] != before:
            return
        if name == "post_fork" and runtime_guard.get_guard() is None:
            _warn_once(
                name,
                "runtime_guard: gunicorn's post_fork is %s, which does not call "
                "runtime_guard's post_fork: worker pid %d runs without a guard. Call "
                "guard_hooks.post_fork(server, worker) from your post_fork.",
                _describe(configured),
                os.getpid(),
            )
        elif name == "child_exit" and _multiproc_dir():
            _warn_once(
                name,
                "runtime_guard: gunicorn's child_exit is %s, which does not call "
                "runtime_guard's child_exit: an exited worker's Prometheus gauges stay until "
                "the next scrape. Call guard_hooks.child_exit(server, worker) from your "
                "child_exit.",
                _describe(configured),
            )

    setattr(hook, _CHECK, name)
    return hook


def _check_hooks(server: Any) -> None:
    """Warn where gunicorn will not run one of the guard's hooks; never raises."""
    try:
        _check_replaced_defs(server)
        for name in ("post_fork", "child_exit"):
            configured = getattr(server.cfg, name)
            if _is_guard_hook(configured, name) or hasattr(configured, _CHECK):
                continue
            server.cfg.set(name, _checked(name, configured))
    except Exception:
        _log.exception("runtime_guard: could not check gunicorn's hooks")


def _mark(name: str, hook: Hook) -> Hook:
    setattr(hook, _MARK, name)
    return hook


def hooks(recycle: bool = True, error_log: bool = False, **options: Any) -> dict[str, Hook]:
    """Return the server hooks, to put in the gunicorn config module's globals.

    ``options`` are :func:`runtime_guard.install` options (validated now, so a bad one
    stops the master rather than every worker); ``recycle=False`` leaves recycling off;
    ``error_log=True`` copies the guard's log to gunicorn's error log
    (:func:`use_error_log`).
    """
    Config.from_options(options)

    def on_starting(server: Any) -> None:
        _calls["on_starting"] += 1
        # prometheus_client's rule for multiprocess mode: start from an empty directory,
        # or files of a previous run's workers are summed into this one's.
        directory = _multiproc_dir()
        if directory and os.path.isdir(directory):
            for path in glob.glob(os.path.join(directory, "*.db")):
                os.remove(path)
        if server is not None:
            _check_hooks(server)

    def post_fork(server: Any, worker: Any) -> None:
        _calls["post_fork"] += 1
        try:
            if error_log:
                use_error_log(server)
            guard = runtime_guard.install(**options)
            if recycle:
                enable_recycling(guard)
            _log.info("runtime_guard: guard installed in gunicorn worker pid %d", worker.pid)
        except Exception:
            # Never take the worker down: it serves without a guard, and says so.
            _log.exception("runtime_guard: could not install the guard in a gunicorn worker")
        if not _calls["on_starting"]:
            # The master ran another on_starting: look for clashes from here instead.
            try:
                _check_replaced_defs(server)
            except Exception:
                _log.exception("runtime_guard: could not check gunicorn's hooks")

    def child_exit(server: Any, worker: Any) -> None:
        _calls["child_exit"] += 1
        worker_gone(worker.pid)

    return {
        "on_starting": _mark("on_starting", on_starting),
        "post_fork": _mark("post_fork", post_fork),
        "child_exit": _mark("child_exit", child_exit),
    }


_default = hooks()
on_starting: Hook = _default["on_starting"]
"""Hook: clears Prometheus multiprocess files from a previous run; checks the hooks."""
post_fork: Hook = _default["post_fork"]
"""Hook: installs the guard (options from ``RUNTIME_GUARD_*``) and recycling in the worker."""
child_exit: Hook = _default["child_exit"]
"""Hook: tells Prometheus multiprocess mode that a worker is gone."""
