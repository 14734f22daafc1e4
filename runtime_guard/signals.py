"""The signals the guard sends; connect receivers with blinker's usual ``connect``.

Every signal is sent with the :class:`~runtime_guard.Guard` as sender and keyword payloads.
A receiver that raises is logged once per receiver and exception type and never reaches
the code that caused the signal.
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import NamedSignal, Namespace

__all__ = [
    "emit",
    "feature_restored",
    "feature_shed",
    "gc_forced",
    "leak_suspected",
    "namespace",
    "overlap_skipped",
    "pressure_changed",
    "recycle_pending",
    "restart_requested",
    "sample_taken",
    "unreleased_objects",
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
