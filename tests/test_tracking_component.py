"""The tracking component: its judgement on tracked counts, signals, reports and health."""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tracked import MADE_AT, Resource, make_resources

import runtime_guard
from runtime_guard import signals, tracking
from runtime_guard.testing import make_guard
from runtime_guard.tracking import UnreleasedReport, live_objects, track
from runtime_guard.tracking import component as tracking_component
from runtime_guard.tracking.component import judge_growth
from runtime_guard.tracking.imports import watcher


def _received() -> tuple[list[UnreleasedReport], Any]:
    got: list[UnreleasedReport] = []

    def receiver(sender: Any, report: UnreleasedReport) -> None:
        got.append(report)

    signals.unreleased_objects.connect(receiver)
    return got, receiver


def test_judge_growth_needs_steady_growth_of_the_floor() -> None:
    """Steady growth is reported with its rate; bursts that are released again are not."""
    steady = [(float(t), float(t // 10)) for t in range(60)]
    rate = judge_growth(steady, window=10)
    assert rate is not None and rate == pytest.approx(6.0)
    bursts = [(float(t), float(50 if t % 10 == 5 else 2)) for t in range(60)]
    assert judge_growth(bursts, window=10) is None
    assert judge_growth(steady[:20], window=10) is None


def test_component_reports_max_live_once_per_episode(tmp_path: Path) -> None:
    """Over ``max_live``: one signal per episode, with sites most first, written to report_dir."""
    guard = make_guard(track_clients=False, report_dir=str(tmp_path))
    got, receiver = _received()
    try:
        name = track(Resource, max_live=3)
        kept = make_resources(5)
        guard.sample()
        guard.sample()
        guard.flush_signals()
        assert len(got) == 1
        report = got[0]
        assert report.type == name and report.reasons == ["max_live"]
        assert (report.live, report.unreleased, report.released) == (5, 5, 0)
        assert report.sites[0]["line"] == MADE_AT[1]
        assert f"5 live {name}" in str(report) and "over max_live=3" in str(report)
        assert report.path is not None and os.path.dirname(report.path) == str(tmp_path)
        written = json.loads(Path(report.path).read_text())
        assert written["kind"] == "unreleased" and written["type"] == name
        assert guard.health()["unreleased_objects"][name]["live"] == 5
        for resource in kept:
            resource.close()
        del kept, resource
        gc.collect()
        for _ in range(tracking_component.QUIET_SAMPLES):
            guard.sample()
        again = make_resources(5)
        guard.sample()
        guard.flush_signals()
        assert len(got) == 2 and len(again) == 5
    finally:
        signals.unreleased_objects.disconnect(receiver)
        guard.stop()


def test_component_reports_collection_without_release() -> None:
    """Instances collected without release are reported with the sites that made them."""
    guard = make_guard(track_clients=False)
    got, receiver = _received()
    try:
        name = track(Resource)
        guard.sample()
        make_resources(4)
        gc.collect()
        guard.sample()
        guard.flush_signals()
        assert [r.reasons for r in got] == [["collected_unreleased"]]
        assert got[0].collected_unreleased == 4
        assert got[0].collected_sites[0]["line"] == MADE_AT[1]
        assert "4 collected without release" in str(got[0])
        assert got[0].type == name
    finally:
        signals.unreleased_objects.disconnect(receiver)
        guard.stop()


def test_component_reports_steady_growth() -> None:
    """Unreleased counts that rise window after window are reported as growing."""
    guard = make_guard(track_clients=False, interval=0.001)
    got, receiver = _received()
    kept: list[Resource] = []
    try:
        track(Resource)
        window = tracking_component.WINDOW_SAMPLES * 0.001
        for _ in range(tracking_component.GROWTH_WINDOWS + 3):
            kept += make_resources(3)
            guard.sample()
            time.sleep(window * 1.2)
        guard.flush_signals()
        assert len(got) == 1
        assert got[0].reasons == ["growing"]
        assert got[0].growth_per_minute is not None and got[0].growth_per_minute > 0
        assert "growing" in str(got[0])
    finally:
        signals.unreleased_objects.disconnect(receiver)
        guard.stop()


def test_installed_guard_signals_from_its_own_thread() -> None:
    """With a running guard the signal arrives on its own, from the sampler thread."""
    arrived = threading.Event()
    got: list[UnreleasedReport] = []

    def receiver(sender: Any, report: UnreleasedReport) -> None:
        got.append(report)
        arrived.set()

    signals.unreleased_objects.connect(receiver)
    try:
        runtime_guard.install(interval=0.05, track_clients=False)
        track(Resource, max_live=2)
        kept = make_resources(3)
        assert arrived.wait(30)
        assert got[0].live == 3
        del kept
    finally:
        signals.unreleased_objects.disconnect(receiver)


def test_report_to_dict_round_trips_as_json() -> None:
    """The report is JSON-ready and its text names type, counts, site and growth."""
    track(Resource)
    kept = make_resources(2)
    report = tracking.build_report("tracked.Resource", ["growing"], growth=30.0)
    assert report is not None
    data = json.loads(json.dumps(report.to_dict()))
    assert data["live"] == 2 and data["reasons"] == ["growing"]
    assert "growing 30/min" in str(report) and "none released" in str(report)
    del kept


def test_guard_uninstall_removes_every_patch() -> None:
    """``uninstall()`` leaves tracked and known client classes exactly as they were."""
    import socket

    before = {cls: list(cls.__dict__.items()) for cls in (Resource, socket.socket)}
    runtime_guard.install(interval=60)
    track(Resource, max_live=10)
    assert "socket.socket" in live_objects()
    assert Resource.__dict__["__init__"] is not before[Resource][0][1]
    runtime_guard.uninstall()
    after = {cls: list(cls.__dict__.items()) for cls in (Resource, socket.socket)}
    assert after == before
    assert live_objects() == {}
    assert watcher not in sys.meta_path


def test_component_keeps_at_most_its_report_and_point_caps() -> None:
    """Over many samples and episodes the tracking component keeps the last floors of each
    type and its last 20 reports, however long it runs."""
    from runtime_guard.testing import ManualClock

    class Pooled(Resource):
        pass

    name = track(Pooled, max_live=0)
    clock = ManualClock()
    guard = make_guard(clock=clock)
    try:
        component = guard.component("tracking")
        assert isinstance(component, tracking_component.TrackingComponent)
        for _ in range(25):
            held = Pooled()
            guard.sample()  # over max_live: an episode and its report
            held.close()
            del held
            # Its reference count frees it; a full collection of a session's heap in each
            # of 25 rounds took seconds.
            gc.collect(0)
            for _ in range(tracking_component.QUIET_SAMPLES):
                clock.now += 1.0
                guard.sample()
        assert len(component.reports) == 20
        floors = component._states[name].floors.floors
        assert len(floors) == floors.maxlen == tracking_component.GROWTH_WINDOWS + 1
    finally:
        guard.stop()
