"""The public health body: figures only, for anyone who can reach the route or the metrics.

No source paths, report text or object contents leave the process through it; the whole of
``Guard.health()`` is for loopback clients and holders of the status token only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["public_health"]


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
        # What the name promises: instances never released, not every live one (a server
        # holds its own open connection while it answers this very request).
        for key in ("count", "unreleased", "live"):
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
