"""The leak report: what grows, how fast, since when, where, held by whom, and which route."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime_guard._units import format_duration, format_size

if TYPE_CHECKING:
    from runtime_guard.diagnosis.census import TypeGrowth
    from runtime_guard.diagnosis.sites import AllocationSite
    from runtime_guard.leaks.routes import RouteGrowth

__all__ = ["MB", "Holder", "LeakReport"]

MB = 1_000_000
"""Rates are given in MB (10**6 bytes) per minute, as the options state them."""


@dataclass
class Holder:
    """The collection that keeps the leaked objects alive, and how much it keeps."""

    path: str
    """How code names it: ``app.cache._RESPONSES``, ``RateLimiter.hits``."""
    type_name: str
    """Its type (``dict``, ``list``, ...)."""
    item_type: str
    """The type of what it holds, on the way to an object allocated at the top line."""
    entries: int | None = None
    """``len()`` of it, when it is a container."""
    retained_bytes: int | None = None
    """Its deep size: what it and everything below it keep alive (pympler)."""
    sampled: int = 0
    """Entries sized to estimate :attr:`retained_bytes` (0: sized whole)."""
    entries_per_min: float | None = None
    """How fast its entries grew while the detector watched it after the diagnosis."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "path": self.path,
            "type": self.type_name,
            "item_type": self.item_type,
            "entries": self.entries,
            "bytes": self.retained_bytes,
            "sampled": self.sampled,
            "entries_per_min": (
                None if self.entries_per_min is None else round(self.entries_per_min, 1)
            ),
        }

    def __str__(self) -> str:
        text = f"{self.path} ({self.type_name})"
        if self.retained_bytes is not None:
            text += f": {format_size(self.retained_bytes)}"
            if self.sampled:
                text += " (estimated)"
        if self.entries is not None:
            text += f"{':' if self.retained_bytes is None else ''} in {self.entries:,} entries"
        if self.entries_per_min is not None:
            text += f", growing {self.entries_per_min:+,.0f}/min"
        return text


@dataclass
class LeakReport:
    """A suspected growth leak: what grows, how fast, since when, and where, held by whom."""

    metric: str
    """The figure whose floor rose: ``"heap"`` (Python's allocated blocks) or ``"rss"``.
    RSS rises with large Python objects as much as with native memory; :attr:`origin` says
    which it is."""
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
    origin: str = "unknown"
    """``"python"`` (tracemalloc traced the growth: objects of any size made by Python
    code), ``"native"`` (RSS grew while tracemalloc's traced total stayed flat), or
    ``"unknown"`` (no tracemalloc in the diagnosis: :attr:`diagnosis` says why)."""
    traced_bytes_per_min: float | None = None
    """Bytes per minute tracemalloc saw kept during the diagnosis window."""
    holder: Holder | None = None
    """What keeps the leaked objects alive, with its retained size."""
    holder_svg: str | None = None
    """The holder's reference chain drawn by objgraph and Graphviz (SVG), when available."""
    routes: list[RouteGrowth] = field(default_factory=list)
    """Routes (or Celery tasks) ranked by the bytes each request leaves allocated."""
    reason: str = "growth"
    """Why the diagnosis ran: ``"growth"`` (the detector's suspicion) or an on-demand
    request (``"SIGUSR2"``, ``"POST /..."``, what another part of the guard said)."""
    longest_step_seconds: float = 0.0
    """The longest stretch of the diagnosis that held the GIL without a pause (a snapshot,
    a census, a slice of the holder search)."""
    steps: dict[str, float] = field(default_factory=dict)
    """Seconds of each step of the diagnosis, pauses for other threads included."""
    path: str | None = None
    """Where the report was written, with ``report_dir``."""

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
        data["holder"] = self.holder.to_dict() if self.holder is not None else None
        data["routes"] = [route.to_dict() for route in self.routes]
        data["steps"] = {name: round(seconds, 4) for name, seconds in self.steps.items()}
        if data["traced_bytes_per_min"] is not None:
            data["traced_bytes_per_min"] = round(data["traced_bytes_per_min"], 1)
        data["rate_mb_per_min"] = round(self.rate_mb_per_min, 4)
        for key in ("rate_bytes_per_min", "heap_blocks_per_min", "rss_bytes_per_min"):
            data[key] = round(data[key], 1)
        for key in ("duration_seconds", "time_to_limit_seconds", "detected_at"):
            if data[key] is not None:
                data[key] = round(data[key], 3)
        for key in (
            "diagnosis_window_seconds",
            "tracemalloc_seconds",
            "heap_walk_seconds",
            "longest_step_seconds",
        ):
            data[key] = round(data[key], 4)
        return data

    @property
    def what(self) -> str:
        """What grows, in words: the conclusion when the diagnosis reached one."""
        if self.origin == "python":
            return "Python heap"
        if self.origin == "native":
            return "native memory (not the Python heap)"
        return "Python heap (small objects)" if self.metric == "heap" else "RSS"

    def __str__(self) -> str:
        lead = "leak suspected" if self.reason == "growth" else f"diagnosis ({self.reason})"
        head = (
            f"{lead}: {self.what} grows {self.rate_mb_per_min:.2f} MB/min "
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
        if self.holder is not None:
            lines.append(f"  held by: {self.holder}")
            if self.referrer_chain:
                lines.append(f"    chain: {' -> '.join(self.referrer_chain)}")
        elif self.referrer_chain:
            lines.append(f"  held by: {' -> '.join(self.referrer_chain)}")
        if self.routes:
            lines.append("  routes, by what each request leaves allocated:")
            lines += [f"    {route}" for route in self.routes[:5]]
        lines.append(
            f"  diagnosis {self.diagnosis}: tracemalloc on {self.tracemalloc_seconds:.1f} s, "
            f"heap walks {self.heap_walk_seconds:.2f} s"
        )
        return "\n".join(lines)
