"""The one place the package learns of ``fork()``: hooks run in the child, in order.

A lock held by another thread at the moment of the fork stays held forever in the child,
and a sampler thread does not exist there at all; each module that keeps such state
registers its reset here, and this module registers once with ``os.register_at_fork``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

__all__ = ["after_fork_in_child"]

_log = logging.getLogger("runtime_guard")
_hooks: list[Callable[[], None]] = []


def after_fork_in_child(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` in every forked child, after the hooks registered before it."""
    _hooks.append(hook)
    return hook


def _run_hooks() -> None:
    for hook in list(_hooks):
        try:
            hook()
        except Exception:
            # A failing reset must not stop the others, nor raise into the host's fork().
            _log.exception("runtime_guard: after-fork hook %r failed", hook)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_hooks)
