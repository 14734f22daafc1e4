"""What the probe routes answer: the public health body and the Kubernetes verdicts.

The public body holds figures only, for anyone who can reach the route or the metrics: no
source paths, report text or object contents leave the process through it; the whole of
``Guard.health()`` is for loopback clients and holders of the status token only.
``/livez`` and ``/readyz`` answer the two questions Kubernetes asks, each on its own terms
(see :func:`liveness` and :func:`readiness`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runtime_guard.pressure import Pressure

if TYPE_CHECKING:
    from runtime_guard.guard import Guard

__all__ = ["WEDGED_AFTER", "liveness", "public_health", "readiness", "takes_traffic"]


_FIGURE_KEYS = (
    "status",
    "pressure",
    "usage_bytes",
    "limit_bytes",
    "usage_fraction",
    "rss_bytes",
    "process_limit_bytes",
    "uptime_seconds",
    "samples",
    "heap_blocks",
    "threads",
    "gc",
)


def _count_of(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        for key in ("count", "live", "unreleased"):
            if isinstance(value.get(key), int):
                return int(value[key])
        return 0
    if isinstance(value, (list, tuple)):
        return len(value)
    return 0


def _feature_name(item: Any) -> str:
    if isinstance(item, Mapping):
        return str(item.get("name", ""))
    return str(getattr(item, "name", item))


def public_health(data: Mapping[str, Any]) -> dict[str, Any]:
    """Reduce ``Guard.health()`` to figures: no source paths, report text or object contents."""
    body = {key: data[key] for key in _FIGURE_KEYS if key in data}
    body["shed_features"] = [_feature_name(f) for f in data.get("shed_features") or ()]
    leaks = data.get("suspected_leaks") or ()
    body["suspected_leaks"] = len(leaks) if isinstance(leaks, (list, tuple, Mapping)) else 0
    unreleased = data.get("unreleased_objects") or {}
    if isinstance(unreleased, Mapping):
        body["unreleased_objects"] = {str(k): _count_of(v) for k, v in unreleased.items()}
    for key, value in data.items():
        if key not in body and isinstance(value, (int, float)) and key != "sources":
            body[key] = value
    return body


# -- the Kubernetes probes ----------------------------------------------------------------

WEDGED_AFTER = 60.0
"""Seconds (at least, and at least five intervals) without a finished sampler round after
which ``/livez`` calls the guard wedged. A round is a sample and the work the components do
after it, a leak diagnosis's heap walk included, which stays well under a minute."""


def liveness(guard: Guard | None) -> tuple[int, dict[str, Any]]:
    """``(code, body)`` of ``/livez``: 503 only when the guard's sampler died or is stuck.

    Memory is not looked at: a process at its limit can still serve, and is recycled by the
    guard, one worker at a time, more gently than a restart of the whole container. Reads
    two attributes of the guard and takes no lock, so a wedged guard cannot hang the probe.
    """
    if guard is None:
        return 200, {"status": "ok", "guard": "not installed"}
    state, since = guard.sampler_status()
    wedged_after = max(WEDGED_AFTER, 5 * guard.config.interval)
    body: dict[str, Any] = {"status": "ok", "sampler": state}
    body["since_round_seconds"] = round(since, 3)
    if state == "dead":
        body.update(status="dead", reason="the guard's sampler thread has died")
        return 503, body
    if state == "running" and since > wedged_after:
        body.update(status="wedged", reason=f"the guard's sampler ended no round for {since:.0f} s")
        return 503, body
    return 200, body


def takes_traffic(worker: Mapping[str, Any], shed_at: Pressure) -> bool:
    """Whether a worker of the container view takes new requests: its figures are fresh, it
    is not draining for a recycle, and its pressure is below the level refusals start at."""
    if worker.get("stale") or worker.get("draining"):
        return False
    try:
        return Pressure.parse(worker.get("pressure", "ok")) < shed_at
    except ValueError:
        return True


def _why_not(worker: Mapping[str, Any], shed_at: Pressure) -> str:
    if worker.get("draining"):
        return f"worker {worker.get('pid')} is draining: {worker['draining']}"
    if worker.get("stale"):
        return f"worker {worker.get('pid')} has published no figures for a while"
    fraction = worker.get("usage_fraction")
    usage = f" ({fraction:.0%} of the limit)" if isinstance(fraction, (int, float)) else ""
    return f"worker {worker.get('pid')} is at {worker.get('pressure')} pressure{usage}"


def readiness(
    guard: Guard | None, shed_at: Pressure, workers: list[dict[str, Any]] | None
) -> tuple[int, dict[str, Any]]:
    """``(code, body)`` of ``/readyz`` for the container: 503 when no live worker takes new
    requests (every one draining for a recycle, or at or above ``shed_at`` after relief and
    shedding), 200 while at least one does.

    ``workers`` is the container view (this worker included); ``None`` when it could not
    be read, which never makes the container unready: a guard that cannot judge does not
    take the container out of service.
    """
    if guard is None:
        return 200, {"ready": True, "status": "ready", "guard": "not installed"}
    if workers is None:
        return 200, {"ready": True, "status": "ready", "error": "no view of the container"}
    listed = [dict(w, takes_traffic=takes_traffic(w, shed_at)) for w in workers]
    ready = not listed or any(w["takes_traffic"] for w in listed)
    body: dict[str, Any] = {"ready": ready, "status": "ready" if ready else "not ready"}
    if not ready:
        ordered = sorted(listed, key=lambda w: not w.get("this"))
        body["reason"] = "; ".join(_why_not(w, shed_at) for w in ordered)
    body["workers"] = listed
    return (200 if ready else 503), body
