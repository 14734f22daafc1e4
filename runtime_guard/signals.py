"""The signals the guard sends; connect receivers with blinker's usual ``connect``.

Every signal is sent with the :class:`~runtime_guard.Guard` as sender and keyword payloads.
A receiver that raises is logged once per receiver and exception type and never reaches
the code that caused the signal. (:func:`emit`, the guard's own way of sending them, is not
public.)
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import NamedSignal, Namespace

__all__ = [
    "checkout_held",
    "feature_restored",
    "feature_shed",
    "gc_forced",
    "leak_suspected",
    "loop_blocked",
    "namespace",
    "overlap_skipped",
    "pool_exhausted",
    "pressure_changed",
    "recycle_pending",
    "resources_growing",
    "restart_requested",
    "sample_taken",
    "unreleased_objects",
    "work_stuck",
]

_log = logging.getLogger("runtime_guard")

namespace = Namespace()
"""The project's own namespace: these names never collide with another library's signals."""

sample_taken = namespace.signal("sample_taken", doc="Every sample. Payload: ``sample: Sample``.")
pressure_changed = namespace.signal(
    "pressure_changed",
    doc="The pressure level changed. Payload: ``old: Pressure``, ``new: Pressure``, "
    "``sample: Sample``.",
)
leak_suspected = namespace.signal(
    "leak_suspected", doc="A growth leak is suspected. Payload: ``report: LeakReport``."
)
unreleased_objects = namespace.signal(
    "unreleased_objects",
    doc="Tracked objects pile up unreleased. Payload: ``report: UnreleasedReport``.",
)
gc_forced = namespace.signal(
    "gc_forced", doc="Relief ran (GC, malloc_trim). Payload: ``result: ReliefResult``."
)
feature_shed = namespace.signal(
    "feature_shed",
    doc="A feature was switched off. Payload: ``feature: Feature``, ``level: Pressure``.",
)
feature_restored = namespace.signal(
    "feature_restored",
    doc="A shed feature is back on. Payload: ``feature: Feature``, ``level: Pressure``.",
)
restart_requested = namespace.signal(
    "restart_requested",
    doc="Relief and shedding did not help; recycle this process. Payload: ``reason: str``.",
)
recycle_pending = namespace.signal(
    "recycle_pending",
    doc="A recycle is due: usage reaches the limit within what a drain needs, or is CRITICAL. "
    "Sent once per episode by every worker that sees it. Payload: ``reason: str``, "
    "``seconds_to_limit: float | None`` (``None`` when usage is CRITICAL without a steady "
    "trend).",
)
overlap_skipped = namespace.signal(
    "overlap_skipped",
    doc="A ``no_overlap`` call was skipped because the previous one still ran. "
    "Payload: ``task: str``.",
)

# -- resources that run out before memory does (runtime_guard.pools, .resources, .stuck,
# .looplag); each is sent once per episode, the guard as sender.
checkout_held = namespace.signal(
    "checkout_held",
    doc="A connection has been checked out of a pool for longer than "
    "``checkout_warn_after``; sent once per checkout. Payload: ``pool: str`` (the pool's "
    "name), ``seconds: float`` (held so far), ``site: Site`` (where it was checked out, "
    "with its short stack).",
)
pool_exhausted = namespace.signal(
    "pool_exhausted",
    doc="A pool had requests waiting and no free connection for longer than "
    "``pool_exhausted_after``; sent once per episode. Payload: ``pool: str``, "
    "``in_use: int``, ``waiting: int`` (``-1`` when the pool cannot tell), ``holders: "
    "list[Checkout]`` (the longest-held checkouts, longest first, each with its site).",
)
work_stuck = namespace.signal(
    "work_stuck",
    doc="A ``no_overlap`` run, a limiter holder or a Celery task has run past its "
    "deadline; sent once per run. Payload: ``task: str``, ``seconds: float`` (running so "
    'far), ``stack: list[str]`` (where it is now, one "file:line in function" a '
    "frame, innermost last).",
)
resources_growing = namespace.signal(
    "resources_growing",
    doc="Threads, asyncio tasks or file descriptors pile up: their floor rose window after "
    "window. Payload: ``report: ResourceReport`` (the kind, the count, the rate, the "
    "creation sites and the oldest ones).",
)
loop_blocked = namespace.signal(
    "loop_blocked",
    doc="An asyncio event loop ran a callback late by more than ``loop_lag_threshold``; "
    "sent once per episode. Payload: ``lag: float`` (seconds late), ``callback: str | "
    "None`` (what blocked it, when known), ``stack: list[str]`` (where the loop's thread "
    "was while blocked, innermost last; empty when not caught in the act).",
)

# Bounded so a receiver raising ever-new exception types cannot grow the guard's memory.
_LOGGED_MAX = 256
_logged: set[tuple[int, type[BaseException]]] = set()


def emit(signal: NamedSignal, sender: Any, **payload: Any) -> int:
    """Send ``signal`` to each receiver in turn, isolating their failures.

    Returns how many receivers raised. Unlike ``Signal.send`` a raising receiver does not
    stop the others.
    """
    if not signal.receivers:
        return 0
    failures = 0
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **payload)
        except Exception as exc:
            failures += 1
            key = (id(receiver), type(exc))
            if key not in _logged and len(_logged) < _LOGGED_MAX:
                _logged.add(key)
                _log.error(
                    "runtime_guard: receiver %r of %s raised; ignored (logged once)",
                    receiver,
                    signal.name,
                    exc_info=True,
                )
    return failures
