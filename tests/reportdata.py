"""A realistic report built from the real report classes, shared by the report tests."""

from __future__ import annotations

import time
from typing import Any

from runtime_guard.diagnosis import AllocationSite, TypeGrowth
from runtime_guard.leaks import LeakReport
from runtime_guard.pressure import Pressure
from runtime_guard.reports.timeline import sample_point
from runtime_guard.sample import Sample

MB = 1024 * 1024
LIMIT = 512 * MB
HOSTILE = "<script>alert('x')</script>"


def samples(count: int = 120, start: float | None = None) -> list[Sample]:
    """A climb to CRITICAL and back, one sample a second."""
    start = time.time() - count if start is None else start
    out = []
    for i in range(count):
        fraction = 0.3 + 0.68 * i / 90 if i < 90 else 0.45
        level = Pressure.OK
        for threshold, name in (
            (0.70, Pressure.ELEVATED),
            (0.85, Pressure.HIGH),
            (0.95, Pressure.CRITICAL),
        ):
            if fraction >= threshold:
                level = name
        usage = int(LIMIT * fraction)
        out.append(
            Sample(
                monotonic=float(i),
                wall=start + i,
                rss=usage,
                usage=usage,
                limit=LIMIT,
                usage_fraction=fraction,
                heap_blocks=100_000 + i * 50,
                gc_counts=(1, 2, 3),
                gc_collections=i,
                gc_pause=0.001 * i,
                threads=3,
                pressure=level,
            )
        )
    return out


def leak_report(site_file: str = "/srv/app/views.py") -> dict[str, Any]:
    return leak_report_object(site_file).to_dict()


def leak_report_object(site_file: str = "/srv/app/views.py") -> LeakReport:
    return LeakReport(
        metric="heap",
        rate_bytes_per_min=2_100_000.0,
        heap_blocks_per_min=26_000.0,
        rss_bytes_per_min=2_000_000.0,
        duration_seconds=75.0,
        time_to_limit_seconds=400.0,
        usage_bytes=300 * MB,
        limit_bytes=LIMIT,
        detected_at=time.time(),
        top_sites=[
            AllocationSite(
                site_file,
                42,
                "get_user",
                12 * MB,
                4000,
                [f"{site_file}:42 in get_user", "/srv/app/wsgi.py:10 in app"],
            ),
            AllocationSite("/srv/app/cache.py", 7, "remember", 2 * MB, 900, []),
        ],
        growing_types=[TypeGrowth("dict", 100, 5100), TypeGrowth("app.Session", 1, 2000)],
        referrer_chain=["app.views._cache (dict)", "['sessions'] list", "app.Session"],
        chain_type="app.Session",
        diagnosis="done",
        diagnosis_window_seconds=20.0,
        tracemalloc_seconds=20.0,
        heap_walk_seconds=0.3,
        note="The Python heap's floor rose in every recent window.",
    )


def unreleased_report() -> dict[str, Any]:
    site = {
        "site": "app/views.py:88 in lookup",
        "file": "app/views.py",
        "line": 88,
        "function": "lookup",
        "stack": ["app/views.py:88 in lookup", "app/wsgi.py:10 in app"],
        "count": 412,
        "unreleased": 412,
        "oldest_age": 88.0,
    }
    return {
        "type": "redis.Redis",
        "reasons": ["growth"],
        "live": 412,
        "unreleased": 412,
        "released": 0,
        "collected_unreleased": 3,
        "created": 415,
        "max_live": None,
        "growth_per_minute": 30.0,
        "oldest_age": 88.0,
        "sites": [site],
        "collected_sites": [],
        "wall": time.time(),
        "path": None,
    }


def episode(count: int = 120) -> dict[str, Any]:
    """An episode report as the timeline writes it, with one of every marker."""
    points = samples(count)
    start = points[0].wall
    kinds = [
        (40, "leak", "leak suspected: Python heap grows 2.10 MB/min"),
        (60, "relief", "relief (pressure, ELEVATED): returned 12 MiB"),
        (75, "shed", "shed recommendations"),
        (85, "unreleased", "unreleased objects: 412 live redis.Redis"),
        (88, "recycle", "recycle requested: critical for 60 s"),
        (100, "restore", "restored recommendations"),
        (101, "pressure", "CRITICAL -> OK"),
    ]
    return {
        "kind": "episode",
        "generated": start + count,
        "thresholds": {"elevated": 0.70, "high": 0.85, "critical": 0.95},
        "samples": [sample_point(s) for s in points],
        "events": [{"wall": start + t, "kind": k, "label": label} for t, k, label in kinds],
        "leak": leak_report(),
        "unreleased": {"types": {"redis.Redis": unreleased_report()}},
        "relief": {"reason": "pressure", "collected": 120, "usage_before": 400 * MB},
        "health": {"status": "degraded", "pressure": "ok", "usage_bytes": 230 * MB},
    }
