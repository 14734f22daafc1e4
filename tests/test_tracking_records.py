"""The record store: its tables stay bounded however many instances go by."""

from __future__ import annotations

import gc

from tracked import Resource

from runtime_guard import tracking
from runtime_guard.tracking import track


def test_collected_without_release_tables_are_capped() -> None:
    """Instances collected unreleased from more distinct sites than the cap are all counted,
    but the per-site table holds at most MAX_COLLECTED_SITES sites and the recent-collection
    memory at most RECENT_COLLECTED records."""
    from runtime_guard.tracking import records

    class Dropped(Resource):
        pass

    name = track(Dropped)
    tracking.marker()
    sites = records.MAX_COLLECTED_SITES + 44
    for index in range(sites):
        code = compile("Dropped()", f"/srv/app/site_{index}.py", "eval")
        eval(code, {"Dropped": Dropped})
    for _ in range(records.RECENT_COLLECTED + 200):
        Dropped()
    gc.collect()
    entry = tracking.default_registry.entry(name)
    assert entry is not None
    assert entry.collected_unreleased == sites + records.RECENT_COLLECTED + 200
    assert len(entry.collected_sites) == records.MAX_COLLECTED_SITES
    assert len(tracking.default_registry.store.recent) == records.RECENT_COLLECTED
