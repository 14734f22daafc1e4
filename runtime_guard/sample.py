"""One reading of the process: what the sampler records and signals carry."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from runtime_guard._units import format_size
from runtime_guard.pressure import Pressure

__all__ = ["Sample"]


@dataclass(frozen=True, slots=True)
class Sample:
    """Figures of one moment; cheap to take, immutable once taken."""

    monotonic: float
    """``time.monotonic()`` when taken: for intervals and rates."""
    wall: float
    """``time.time()`` when taken: for display."""
    rss: int
    """This process's resident set size in bytes."""
    usage: int
    """Bytes counted against the limit (cgroup working set, or RSS outside a limited cgroup)."""
    limit: int
    """The memory limit in bytes."""
    usage_fraction: float
    """The fraction pressure is judged on (the higher one when ``process_limit`` is set)."""
    heap_blocks: int
    """``sys.getallocatedblocks()``: live blocks of Python's allocator."""
    gc_counts: tuple[int, int, int]
    """``gc.get_count()``: allocations since the last collection, per generation."""
    gc_collections: int
    """Garbage collections run so far (all generations)."""
    gc_pause: float
    """Seconds spent in garbage collection so far (measured through ``gc.callbacks``)."""
    threads: int
    """Live Python threads."""
    pressure: Pressure
    """The level after this sample."""
    tasks: int = 0
    """asyncio tasks not yet collected (pending, or finished and still referenced)."""
    fds: int = -1
    """Open file descriptors; ``-1`` where they cannot be counted."""
    loop_lag: float | None = None
    """Worst asyncio event-loop lag in seconds since the previous sample; ``None`` when no
    loop is watched."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = dataclasses.asdict(self)
        data["gc_counts"] = list(self.gc_counts)
        data["pressure"] = self.pressure.name.lower()
        return data

    def __str__(self) -> str:
        return (
            f"{self.pressure.name} usage {format_size(self.usage)} of {format_size(self.limit)} "
            f"({self.usage_fraction:.1%}), rss {format_size(self.rss)}, "
            f"{self.heap_blocks:,} heap blocks, {self.threads} threads"
            + (f", {self.tasks} tasks" if self.tasks else "")
            + (f", {self.fds} fds" if self.fds >= 0 else "")
            + (f", loop lag {self.loop_lag * 1000:.0f} ms" if self.loop_lag is not None else "")
        )
