"""Sentry: one issue per leaking line, with the leak report, its sites and holder attached.

::

    import sentry_sdk
    from runtime_guard.integrations.sentry import RuntimeGuardIntegration

    sentry_sdk.init(dsn="...", integrations=[RuntimeGuardIntegration()])

The guard logs each event as one record (:mod:`runtime_guard.events`): leaks, unreleased
objects and recycles at ERROR, which sentry-sdk's logging integration (on by default)
turns into events. This integration finishes those events: the figures become the
``runtime_guard`` context (the leak's sites, holder and growing type its ``leak`` context),
the event name a ``runtime_guard.event`` tag, and the fingerprint is the leaking line
(``file:line`` of the top allocation site; the creation site for unreleased objects), so
every report of the same leak lands in one issue instead of one issue per occurrence or
per rate in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime_guard.events import FIELDS_ATTR
from runtime_guard.integrations._extras import missing_extra

try:
    import sentry_sdk
    from sentry_sdk.integrations import Integration
    from sentry_sdk.scope import add_global_event_processor
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("sentry", "sentry-sdk", "sentry") from exc

__all__ = ["RuntimeGuardIntegration", "fingerprint"]

_LEAK_KEYS = (
    "site",
    "function",
    "holder",
    "growing_type",
    "metric",
    "rate_bytes_per_min",
    "duration_seconds",
    "time_to_limit_seconds",
)


def fingerprint(event: str, fields: Mapping[str, Any]) -> list[str]:
    """The Sentry fingerprint of one guard event: one issue per leaking line.

    A leak groups by the line that allocates; a leak whose diagnosis found no line (an RSS
    leak, tracemalloc not allowed to run) by the figure that grows, not by the type that
    grew most during the window, which changes from one report to the next. Unreleased
    objects group by their type and creation site; every other event by its name alone.
    """
    if event == "leak_suspected":
        where = fields.get("site") or f"{fields.get('metric') or 'unknown'}, no site"
        return ["runtime_guard", event, str(where)]
    if event == "unreleased_objects":
        return ["runtime_guard", event, str(fields.get("type")), str(fields.get("site"))]
    return ["runtime_guard", event]


def _enrich(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    try:
        return _enriched(event, hint)
    except Exception:  # an event as sentry-sdk made it rather than none
        return event


def _enriched(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    record = hint.get("log_record") if isinstance(hint, Mapping) else None
    name = getattr(record, "event", None)
    if not isinstance(name, str) or not getattr(record, "name", "").startswith("runtime_guard"):
        return event
    if sentry_sdk.get_client().get_integration(RuntimeGuardIntegration) is None:
        return event
    fields = getattr(record, FIELDS_ATTR, None)
    fields = dict(fields) if isinstance(fields, Mapping) else {}
    report = fields.pop("report", None)
    contexts = event.setdefault("contexts", {})
    contexts["runtime_guard"] = {"event": name, **fields}
    if name == "leak_suspected" and isinstance(report, Mapping):
        leak = {key: fields.get(key) for key in _LEAK_KEYS}
        leak["top_sites"] = list(report.get("top_sites") or [])[:5]
        leak["growing_types"] = list(report.get("growing_types") or [])[:5]
        leak["referrer_chain"] = report.get("referrer_chain")
        leak["note"] = report.get("note")
        contexts["leak"] = leak
    elif name == "unreleased_objects" and isinstance(report, Mapping):
        contexts["unreleased"] = {
            "type": report.get("type"),
            "sites": list(report.get("sites") or [])[:5],
            "collected_sites": list(report.get("collected_sites") or [])[:5],
        }
    event.setdefault("tags", {})["runtime_guard.event"] = name
    event["fingerprint"] = fingerprint(name, fields)
    extra = event.get("extra")
    if isinstance(extra, dict):  # the same figures, now in the contexts
        extra.pop(FIELDS_ATTR, None)
    return event


class RuntimeGuardIntegration(Integration):
    """Sentry integration: the guard's event records become grouped, detailed events."""

    identifier = "runtime_guard"

    @staticmethod
    def setup_once() -> None:
        add_global_event_processor(_enrich)  # type: ignore[arg-type]
