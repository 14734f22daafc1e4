"""The guard's events as log records: one record per event, its figures in fields.

Every event the guard signals (pressure changed, leak suspected, unreleased objects,
relief, a feature shed or restored, a restart or recycle asked for) is also logged once on
the ``runtime_guard`` logger, by the :class:`EventLog` component that receives the guard's
signals. A record's message reads as a sentence; the figures ride along as attributes the
``extra`` way, so JSON formatters, structlog and Sentry get fields, not a text blob:

- ``record.event``: a stable name (the signal's, or ``recycle_scheduled`` and
  ``recycle_started`` for the recycling itself);
- ``record.runtime_guard``: a JSON-ready dict of the figures, with the process's ``pid``.

Levels follow severity: ERROR for a leak, unreleased objects and a recycle (so Sentry's
logging integration makes an event, not a breadcrumb), WARNING for pressure at HIGH or
above, INFO for the rest. Nothing here raises into the host: a payload that cannot be
turned into fields is logged with what could be read.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blinker import NamedSignal

from runtime_guard import signals
from runtime_guard._component import Component
from runtime_guard.pressure import Pressure

if TYPE_CHECKING:
    from runtime_guard.guard import Guard

__all__ = ["EVENTS", "FIELDS_ATTR", "EventSpec", "record"]

_log = logging.getLogger("runtime_guard")

FIELDS_ATTR = "runtime_guard"
"""The record attribute holding an event's figures (``record.runtime_guard``)."""

Payload = Mapping[str, Any]


def record(event: str, level: int, message: str, fields: Mapping[str, Any]) -> None:
    """Log one event: ``message`` as the text, ``event`` and ``fields`` as attributes.

    For parts of the guard whose event has no signal (the recycler), and for
    :class:`EventLog`. Never raises.
    """
    try:
        data = dict(fields)
        data.setdefault("pid", os.getpid())
        _log.log(level, "runtime_guard: %s", message, extra={"event": event, FIELDS_ATTR: data})
    except Exception:  # a broken handler or formatter: logging's own handleError ran
        pass


def _json_ready(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Pressure):
        return value.name.lower()
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_ready(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _json_ready(to_dict())
    return str(value)


def _report(payload: Payload) -> dict[str, Any]:
    report = payload.get("report")
    data = _json_ready(report)
    return data if isinstance(data, dict) else {"report": data}


# -- one function per event: (message, fields) from the signal's payload --------------------


def _pressure(payload: Payload) -> tuple[str, dict[str, Any]]:
    old, new, sample = payload["old"], payload["new"], payload["sample"]
    fields = {
        "old": Pressure.parse(old).name.lower(),
        "new": Pressure.parse(new).name.lower(),
        "usage_bytes": sample.usage,
        "limit_bytes": sample.limit,
        "usage_fraction": round(sample.usage_fraction, 4),
        "rss_bytes": sample.rss,
    }
    return f"pressure {old.name} -> {new.name} ({sample})", fields


def _pressure_level(payload: Payload) -> int:
    return logging.WARNING if payload["new"] >= Pressure.HIGH else logging.INFO


def _leak(payload: Payload) -> tuple[str, dict[str, Any]]:
    report = _report(payload)
    sites = report.get("top_sites") or []
    top = sites[0] if sites and isinstance(sites[0], Mapping) else {}
    types = report.get("growing_types") or []
    chain = report.get("referrer_chain") or []
    fields = {
        key: report.get(key)
        for key in (
            "metric",
            "rate_bytes_per_min",
            "duration_seconds",
            "time_to_limit_seconds",
            "usage_bytes",
            "limit_bytes",
            "diagnosis",
        )
    }
    fields["site"] = f"{top['filename']}:{top['lineno']}" if "filename" in top else None
    fields["function"] = top.get("function")
    fields["growing_type"] = types[0].get("type_name") if types else None
    fields["holder"] = " -> ".join(map(str, chain)) if chain else None
    fields["report"] = report
    return str(payload.get("report")), fields


def _unreleased(payload: Payload) -> tuple[str, dict[str, Any]]:
    report = _report(payload)
    sites = report.get("sites") or []
    top = sites[0] if sites and isinstance(sites[0], Mapping) else {}
    fields = {
        key: report.get(key)
        for key in (
            "type",
            "reasons",
            "live",
            "unreleased",
            "released",
            "collected_unreleased",
            "created",
            "max_live",
            "growth_per_minute",
        )
    }
    fields["site"] = top.get("site")
    fields["report"] = report
    return f"unreleased objects: {payload.get('report')}", fields


def _relief(payload: Payload) -> tuple[str, dict[str, Any]]:
    result = payload.get("result")
    data = _json_ready(result)
    return str(result), data if isinstance(data, dict) else {"result": data}


def _feature(verb: str) -> Callable[[Payload], tuple[str, dict[str, Any]]]:
    def build(payload: Payload) -> tuple[str, dict[str, Any]]:
        feature, level = payload["feature"], Pressure.parse(payload["level"])
        name = str(getattr(feature, "name", feature))
        fields: dict[str, Any] = {"feature": name, "level": level.name.lower()}
        count = getattr(feature, "shed_count", None)
        if isinstance(count, int):
            fields["shed_count"] = count
        return f"feature {name!r} {verb} at {level.name}", fields

    return build


def _restart(payload: Payload) -> tuple[str, dict[str, Any]]:
    reason = str(payload.get("reason", ""))
    return f"restart requested: {reason}", {"reason": reason}


def _recycle_pending(payload: Payload) -> tuple[str, dict[str, Any]]:
    reason = str(payload.get("reason", ""))
    seconds = payload.get("seconds_to_limit")
    fields = {"reason": reason, "seconds_to_limit": _json_ready(seconds)}
    if isinstance(seconds, (int, float)):
        return f"recycle pending, limit in ~{seconds:.0f} s: {reason}", fields
    return f"recycle pending: {reason}", fields


def _generic(name: str) -> Callable[[Payload], tuple[str, dict[str, Any]]]:
    def build(payload: Payload) -> tuple[str, dict[str, Any]]:
        fields = {str(k): _json_ready(v) for k, v in payload.items()}
        shown = ", ".join(f"{k}={v}" for k, v in fields.items() if not isinstance(v, dict))
        return f"{name.replace('_', ' ')}: {shown}"[:2000], fields

    return build


@dataclass(frozen=True)
class EventSpec:
    """How one signal becomes a record."""

    signal: str
    """The signal's name in :mod:`runtime_guard.signals` (also the record's ``event``)."""
    level: int | Callable[[Payload], int]
    """The record's level, or a function of the payload giving it."""
    build: Callable[[Payload], tuple[str, dict[str, Any]]]
    """``(message, fields)`` from the payload."""


EVENTS: tuple[EventSpec, ...] = (
    EventSpec("pressure_changed", _pressure_level, _pressure),
    EventSpec("leak_suspected", logging.ERROR, _leak),
    EventSpec("unreleased_objects", logging.ERROR, _unreleased),
    EventSpec("gc_forced", logging.INFO, _relief),
    EventSpec("feature_shed", logging.INFO, _feature("shed")),
    EventSpec("feature_restored", logging.INFO, _feature("restored")),
    EventSpec("restart_requested", logging.ERROR, _restart),
    EventSpec("recycle_pending", logging.ERROR, _recycle_pending),
    EventSpec("pool_exhausted", logging.WARNING, _generic("pool_exhausted")),
    EventSpec("checkout_held", logging.WARNING, _generic("checkout_held")),
    EventSpec("work_stuck", logging.WARNING, _generic("work_stuck")),
)
"""The events logged; a signal this version does not define is skipped."""


class EventLog(Component):
    """Logs each of its guard's signalled events once (see :data:`EVENTS`).

    It receives the signals on the guard's signal thread, like any receiver, so logging
    never delays the sampler; records come out in the order the events happened.
    """

    name = "events"

    def __init__(self, guard: Guard) -> None:
        self._connected: list[tuple[NamedSignal, Callable[..., None]]] = []
        for spec in EVENTS:
            signal = getattr(signals, spec.signal, None)
            if not isinstance(signal, NamedSignal):
                continue
            receiver = functools.partial(_receive, spec)
            signal.connect(receiver, sender=guard, weak=False)
            self._connected.append((signal, receiver))

    def close(self, guard: Guard) -> None:
        # Without a sender: blinker forgets a receiver only when disconnected from ANY.
        for signal, receiver in self._connected:
            signal.disconnect(receiver)
        self._connected.clear()


def _receive(spec: EventSpec, sender: Any, **payload: Any) -> None:
    try:
        message, fields = spec.build(payload)
    except Exception:
        message, fields = f"{spec.signal}: {payload!r}"[:2000], {}
    try:
        level = spec.level(payload) if callable(spec.level) else spec.level
    except Exception:
        level = logging.WARNING
    record(spec.signal, level, message, fields)
