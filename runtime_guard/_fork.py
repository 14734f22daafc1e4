"""The one place the package learns of ``fork()``: hooks run in the child, in order.

A lock held by another thread at the moment of the fork stays held forever in the child,
and a sampler thread does not exist there at all; each module that keeps such state
registers its reset here, and this module registers once with ``os.register_at_fork``.

The same holds for the import system's per-module locks: a module that the sampler thread
is importing when another thread forks stays half-imported and locked in the child, whose
first import of it then hangs for good. The sampler imports what it needs on first use
(hashlib for the container's key, the diagnosis after a suspicion), so a fork waits for
the sampler's round in progress (:func:`held_off`), up to :data:`FORK_WAIT`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

__all__ = ["FORK_WAIT", "after_fork_in_child", "held_off"]

_log = logging.getLogger("runtime_guard")
_hooks: list[Callable[[], None]] = []

FORK_WAIT = 0.5
"""Seconds a fork waits for a sampler round to end. A round takes well under a millisecond,
and an import a few; only a diagnosis's long steps run longer, and the fork then goes ahead
as it would without the guard."""

_round = threading.RLock()
_acquired: list[bool] = []


def held_off() -> threading.RLock:
    """The lock a fork in another thread waits for (``with _fork.held_off(): ...``)."""
    return _round


def _before() -> None:
    # Re-entrant: a fork from inside a held block (a host's code that the sampler called)
    # goes ahead at once.
    _acquired.append(_round.acquire(timeout=FORK_WAIT))


def _after_in_parent() -> None:
    if _acquired.pop():
        _round.release()


def _after_in_child() -> None:
    global _round
    _acquired.clear()
    _round = threading.RLock()
    _run_hooks()


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
    os.register_at_fork(
        before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
    )
