"""The leak report: what grows, how fast, since when, where, and held by whom."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime_guard._units import format_duration

if TYPE_CHECKING:
    from runtime_guard.diagnosis.census import TypeGrowth
    from runtime_guard.diagnosis.sites import AllocationSite

__all__ = ["MB", "LeakReport"]

MB = 1_000_000
"""Rates are given in MB (10**6 bytes) per minute, as the options state them."""


@dataclass
class LeakReport:
    """A suspected growth leak: what grows, how fast, since when, and where, held by whom."""

    metric: str
    """``"heap"`` (Python's heap blocks grow) or ``"rss"`` (only RSS grows: native memory,
    large buffers outside the small-object heap, or fragmentation)."""
    rate_bytes_per_min: float
    """Growth rate in bytes per minute (RSS's own rate, or heap blocks at ~80 bytes each)."""
    heap_blocks_per_min: float
    """Slope of the heap-block floor, blocks per minute."""
    rss_bytes_per_min: float
    """Slope of the RSS floor, bytes per minute."""
    duration_seconds: float
    """How long the floor has been rising."""
    time_to_limit_seconds: float | None
    """Seconds until the limit is reached at this rate (``None`` when it cannot be told)."""
    usage_bytes: int
    """Usage when the report was made."""
    limit_bytes: int
    """The limit usage is measured against."""
    detected_at: float
    """``time.time()`` when the suspicion was confirmed."""
    top_sites: list[AllocationSite] = field(default_factory=list)
    """Where memory grew during the diagnosis window (tracemalloc), biggest first."""
    growing_types: list[TypeGrowth] = field(default_factory=list)
    """GC-tracked types whose instance count grew during the window, biggest first."""
    referrer_chain: list[str] | None = None
    """Links from a module global to a recent instance of :attr:`chain_type`."""
    chain_type: str | None = None
    """The type the chain was searched for."""
    diagnosis: str = "pending"
    """``"pending"``, ``"done"``, or why a part was skipped."""
    diagnosis_window_seconds: float = 0.0
    """Seconds between the two censuses (and snapshots) of the diagnosis."""
    tracemalloc_seconds: float = 0.0
    """Seconds tracemalloc ran because of this diagnosis (zero when the host ran it)."""
    heap_walk_seconds: float = 0.0
    """Seconds spent in type censuses, the instance search and the referrer chain."""
    note: str = ""
    """What the figures mean and what the tools could not see."""

    @property
    def rate_mb_per_min(self) -> float:
        """:attr:`rate_bytes_per_min` in MB (10**6 bytes) per minute."""
        return self.rate_bytes_per_min / MB

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["top_sites"] = [site.to_dict() for site in self.top_sites]
        data["growing_types"] = [growth.to_dict() for growth in self.growing_types]
        data["referrer_chain"] = list(self.referrer_chain) if self.referrer_chain else None
        data["rate_mb_per_min"] = round(self.rate_mb_per_min, 4)
        for key in ("rate_bytes_per_min", "heap_blocks_per_min", "rss_bytes_per_min"):
            data[key] = round(data[key], 1)
        for key in ("duration_seconds", "time_to_limit_seconds", "detected_at"):
            if data[key] is not None:
                data[key] = round(data[key], 3)
        for key in ("diagnosis_window_seconds", "tracemalloc_seconds", "heap_walk_seconds"):
            data[key] = round(data[key], 4)
        return data

    def __str__(self) -> str:
        what = "Python heap" if self.metric == "heap" else "RSS (not the Python heap)"
        head = (
            f"leak suspected: {what} grows {self.rate_mb_per_min:.2f} MB/min "
            f"for {format_duration(self.duration_seconds)}"
        )
        if self.time_to_limit_seconds is not None:
            head += (
                f"; limit reached in ~{format_duration(self.time_to_limit_seconds)} at this rate"
            )
        lines = [head]
        if self.note:
            lines.append(f"  {self.note}")
        if self.top_sites:
            lines.append("  top allocation sites:")
            lines += [f"    {site}" for site in self.top_sites[:5]]
        if self.growing_types:
            lines.append("  growing types:")
            lines += [f"    {growth}" for growth in self.growing_types[:5]]
        if self.referrer_chain:
            lines.append(f"  held by: {' -> '.join(self.referrer_chain)}")
        lines.append(
            f"  diagnosis {self.diagnosis}: tracemalloc on {self.tracemalloc_seconds:.1f} s, "
            f"heap walks {self.heap_walk_seconds:.2f} s"
        )
        return "\n".join(lines)
