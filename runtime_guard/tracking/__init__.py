"""Tracked classes: live instances with their creation sites, and the ones never released.

:mod:`~runtime_guard.tracking.registry` holds the tracked classes and answers the queries
(with or without a guard); :mod:`~runtime_guard.tracking.records` keeps the record of each
instance, :mod:`~runtime_guard.tracking.patching` puts the wrappers on the classes,
:mod:`~runtime_guard.tracking.imports` reaches classes imported later and
:mod:`~runtime_guard.tracking.clients` knows the client libraries tracked by default;
:mod:`~runtime_guard.tracking.component` judges the counts on every sample and reports what
piles up.
"""

from runtime_guard.tracking.component import UnreleasedReport, build_report
from runtime_guard.tracking.registry import (
    TrackedInstance,
    TrackingRegistry,
    default_registry,
    disable_known_clients,
    enable_known_clients,
    is_tracked,
    live_objects,
    marker,
    track,
    tracked_names,
    unreleased_since,
    untrack,
    untrack_all,
)

__all__ = [
    "TrackedInstance",
    "TrackingRegistry",
    "UnreleasedReport",
    "build_report",
    "default_registry",
    "disable_known_clients",
    "enable_known_clients",
    "is_tracked",
    "live_objects",
    "marker",
    "track",
    "tracked_names",
    "unreleased_since",
    "untrack",
    "untrack_all",
]
