"""What a worker leaves behind when the guard recycles it: why, and what grew in it.

The report is a timeline snapshot (samples, events, health) with a ``recycle`` section (the
reason, the predicted time to the limit, this worker's growth and its neighbours'), the
leak diagnosis of this worker (top growth sites, growing types, the holder; an open
diagnosis window is closed early for it) and the tracked clients it never released, with
their creation sites. ``runtime-guard report`` and the HTML report render it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime_guard.leaks.detector import LeakDetector
from runtime_guard.reports.timeline import snapshot
from runtime_guard.tracking.registry import TrackingRegistry, default_registry

if TYPE_CHECKING:
    from runtime_guard.guard import Guard
    from runtime_guard.recycling import RecyclePolicy
    from runtime_guard.sample import Sample

__all__ = ["build_recycle_report", "summary_line"]

HISTORY_SECONDS = 600.0
"""Seconds of samples the report carries before the recycle."""


def build_recycle_report(
    guard: Guard, sample: Sample, policy: RecyclePolicy, reason: str
) -> dict[str, Any]:
    """The JSON-ready report of the recycle ``policy`` is about to start."""
    detector = guard.component("leaks")
    leak = None
    if isinstance(detector, LeakDetector):
        detector.finish_diagnosis(guard, sample)
        leak = detector.current_report()
    data = snapshot(guard, since=sample.monotonic - HISTORY_SECONDS)
    data["kind"] = "recycle"
    recycle = policy.details()
    recycle.update(
        reason=reason,
        usage_bytes=sample.usage,
        limit_bytes=sample.limit,
        rss_bytes=sample.rss,
    )
    data["recycle"] = recycle
    if leak is not None:
        mine = leak.to_dict()
        others = [
            item
            for item in data.get("leaks") or ()
            if item.get("detected_at") != mine.get("detected_at")
        ]
        data["leaks"] = [mine, *others]
    registry = getattr(guard.component("tracking"), "registry", None)
    if not isinstance(registry, TrackingRegistry):
        registry = default_registry
    live = registry.live_objects()
    unreleased = {name: entry for name, entry in live.items() if entry.get("unreleased")}
    if unreleased:
        data["unreleased"] = {
            "reason": "clients this worker created and never released",
            "types": unreleased,
        }
    return data


def summary_line(data: dict[str, Any]) -> str:
    """One log line: who recycles, why, the top growth site and the unreleased clients."""
    recycle = data.get("recycle") or {}
    parts = [f"recycling worker pid {recycle.get('pid')}: {recycle.get('reason')}"]
    leaks = data.get("leaks") or []
    if leaks:
        leak = leaks[0]
        sites = leak.get("top_sites") or []
        if sites:
            site = sites[0]
            parts.append(
                f"top growth site {site.get('filename')}:{site.get('lineno')} in "
                f"{site.get('function')}"
            )
        chain = leak.get("referrer_chain")
        # A chain to a builtin (a set, a dict) is as often the interpreter's own as the
        # app's: the log line names only a holder of a class the code defines; the report
        # keeps every chain.
        if chain and "." in str(leak.get("chain_type") or ""):
            parts.append(f"held by {' -> '.join(map(str, chain[:4]))}")
        if not sites and not chain:
            parts.append(f"diagnosis {leak.get('diagnosis')}")
    types = (data.get("unreleased") or {}).get("types") or {}
    for name, entry in list(types.items())[:3]:
        sites = entry.get("sites") or []
        where = f" created at {sites[0].get('site')}" if sites else ""
        parts.append(f"{entry.get('unreleased')} unreleased {name}{where}")
    return "; ".join(parts)
