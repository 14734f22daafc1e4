"""Bounded, on-demand diagnosis: where memory grew, which types, and what holds them.

The expensive tools of the guard, one job a module: :mod:`~runtime_guard.diagnosis.sites`
(tracemalloc diffs named at the user's line), :mod:`~runtime_guard.diagnosis.functions`
(the function around a line), :mod:`~runtime_guard.diagnosis.tracing` (the tracemalloc
session), :mod:`~runtime_guard.diagnosis.census` (live objects by type) and
:mod:`~runtime_guard.diagnosis.referrers` (what holds an object). The leak detector runs
them on the sampler thread only after a suspicion, and the pytest plugin runs them around a
test; nothing here belongs on a request path, and every function is bounded by a result
limit, a depth or a time budget.
"""

from runtime_guard.diagnosis.census import TypeGrowth, census_diff, type_census, type_name
from runtime_guard.diagnosis.referrers import (
    chain_from_path,
    find_instance,
    format_chain,
    referrer_chain,
)
from runtime_guard.diagnosis.sites import AllocationSite, diff_snapshots
from runtime_guard.diagnosis.tracing import (
    DEFAULT_FRAMES,
    STOP_MAY_CRASH,
    TracemallocSession,
    other_threads,
    stop_is_safe,
    thread_idents,
)

__all__ = [
    "DEFAULT_FRAMES",
    "STOP_MAY_CRASH",
    "AllocationSite",
    "TracemallocSession",
    "TypeGrowth",
    "census_diff",
    "chain_from_path",
    "diff_snapshots",
    "find_instance",
    "format_chain",
    "other_threads",
    "referrer_chain",
    "stop_is_safe",
    "thread_idents",
    "type_census",
    "type_name",
]
