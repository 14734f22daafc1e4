"""Bounded, on-demand diagnosis: where memory grew, which types, and what holds them.

The expensive tools of the guard, one job a module: :mod:`~runtime_guard.diagnosis.sites`
(tracemalloc diffs named at the user's line), :mod:`~runtime_guard.diagnosis.functions`
(the function around a line), :mod:`~runtime_guard.diagnosis.tracing` (the tracemalloc
session), :mod:`~runtime_guard.diagnosis.census` (live objects by type) and
:mod:`~runtime_guard.diagnosis.referrers` (what holds an object). The leak detector runs
them on the sampler thread only after a suspicion, and the pytest plugin runs them around a
test; nothing here belongs on a request path, and every function is bounded by a result
limit, a depth or a time budget.

Each name is imported on first use: a process that never diagnoses never loads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime_guard import _lazy

if TYPE_CHECKING:
    from runtime_guard.diagnosis.census import (
        TypeGrowth as TypeGrowth,
    )
    from runtime_guard.diagnosis.census import (
        census_diff as census_diff,
    )
    from runtime_guard.diagnosis.census import (
        type_census as type_census,
    )
    from runtime_guard.diagnosis.census import (
        type_name as type_name,
    )
    from runtime_guard.diagnosis.referrers import (
        chain_from_path as chain_from_path,
    )
    from runtime_guard.diagnosis.referrers import (
        find_instance as find_instance,
    )
    from runtime_guard.diagnosis.referrers import (
        format_chain as format_chain,
    )
    from runtime_guard.diagnosis.referrers import (
        referrer_chain as referrer_chain,
    )
    from runtime_guard.diagnosis.sites import (
        AllocationSite as AllocationSite,
    )
    from runtime_guard.diagnosis.sites import (
        diff_snapshots as diff_snapshots,
    )
    from runtime_guard.diagnosis.tracing import (
        DEFAULT_FRAMES as DEFAULT_FRAMES,
    )
    from runtime_guard.diagnosis.tracing import (
        STOP_MAY_CRASH as STOP_MAY_CRASH,
    )
    from runtime_guard.diagnosis.tracing import (
        TracemallocSession as TracemallocSession,
    )
    from runtime_guard.diagnosis.tracing import (
        other_threads as other_threads,
    )
    from runtime_guard.diagnosis.tracing import (
        stop_is_safe as stop_is_safe,
    )
    from runtime_guard.diagnosis.tracing import (
        thread_idents as thread_idents,
    )

_HOMES = {
    "AllocationSite": "sites",
    "DEFAULT_FRAMES": "tracing",
    "STOP_MAY_CRASH": "tracing",
    "TracemallocSession": "tracing",
    "TypeGrowth": "census",
    "census_diff": "census",
    "chain_from_path": "referrers",
    "diff_snapshots": "sites",
    "find_instance": "referrers",
    "format_chain": "referrers",
    "other_threads": "tracing",
    "referrer_chain": "referrers",
    "stop_is_safe": "tracing",
    "thread_idents": "tracing",
    "type_census": "census",
    "type_name": "census",
}

__getattr__, __dir__, __all__ = _lazy.attach(__name__, _HOMES)
