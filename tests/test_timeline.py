"""The timeline: events from the guard's signals, snapshots for pages, episode reports."""

from __future__ import annotations

import gc
import glob
import json
from pathlib import Path
from types import SimpleNamespace

import reportdata

import runtime_guard
from runtime_guard import Pressure, signals
from runtime_guard.cli import main
from runtime_guard.reports.timeline import (
    MAX_EVENTS,
    MAX_LEAKS,
    MAX_POINTS,
    MAX_TYPES,
    Timeline,
    snapshot,
)
from runtime_guard.testing import FakeProbe, make_guard


def _walk(probe: FakeProbe, guard: runtime_guard.Guard, fractions: list[float]) -> None:
    for fraction in fractions:
        probe.set_fraction(fraction)
        guard.sample()
    guard.flush_signals()


def test_installed_guard_records_a_timeline() -> None:
    """Every installed guard has the timeline component attached."""
    guard = runtime_guard.install(interval=0.5)
    assert isinstance(guard.component("timeline"), Timeline)


def test_events_come_from_the_guards_signals() -> None:
    """Pressure changes, leak, unreleased, shed, restore, relief and recycle become events."""
    probe = FakeProbe()
    guard = make_guard(probe, relief=False)
    try:
        _walk(probe, guard, [0.1, 0.8, 0.1])
        feature = SimpleNamespace(name="recommendations")
        guard.send(signals.leak_suspected, report=reportdata.leak_report_object())
        guard.send(signals.feature_shed, feature=feature, level=Pressure.HIGH)
        guard.send(signals.feature_restored, feature=feature, level=Pressure.OK)
        guard.send(signals.restart_requested, reason="critical for 60 s")
        guard.send(signals.gc_forced, result="relief (manual)")
        guard.flush_signals()
        data = snapshot(guard)
    finally:
        guard.stop()
    kinds = [e["kind"] for e in data["events"]]
    assert kinds == ["pressure", "pressure", "leak", "shed", "restore", "recycle", "relief"]
    labels = [e["label"] for e in data["events"]]
    assert labels[0] == "OK -> ELEVATED"
    assert labels[2].startswith("leak suspected: Python heap grows 2.10 MB/min")
    assert labels[3] == "shed recommendations"
    assert data["leak"]["top_sites"][0]["lineno"] == 42
    assert data["leaks"][0] == data["leak"]
    json.dumps(data)  # JSON-ready


def test_events_of_another_guard_are_ignored() -> None:
    """A timeline records its own guard's signals only."""
    probe = FakeProbe()
    guard, other = make_guard(probe), make_guard(FakeProbe())
    try:
        other.send(signals.restart_requested, reason="not mine")
        other.flush_signals()
        assert snapshot(guard)["events"] == []
    finally:
        guard.stop()
        other.stop()


def test_episode_report_is_written_and_renders(tmp_path: Path) -> None:
    """Leaving OK and coming back writes an episode report that ``runtime-guard report`` renders."""
    probe = FakeProbe()
    guard = make_guard(probe, report_dir=str(tmp_path), relief=False)
    try:
        _walk(probe, guard, [0.1, 0.2, 0.9, 0.97, 0.5, 0.1])
    finally:
        guard.stop()
    files = glob.glob(str(tmp_path / "runtime-guard-episode-*.json"))
    assert len(files) == 1
    with open(files[0], encoding="utf-8") as f:
        data = json.load(f)
    assert data["kind"] == "episode"
    assert [s["pressure"] for s in data["samples"]] == ["ok", "ok", "high", "critical", "ok"]
    assert main(["report", files[0]]) == 0
    assert main(["report", files[0], "--html", str(tmp_path / "episode.html")]) == 0


def test_snapshot_thins_long_history_and_keeps_the_latest() -> None:
    """A long history is thinned to MAX_POINTS samples, ending with the newest."""
    probe = FakeProbe()
    guard = make_guard(probe, history_size=3 * MAX_POINTS, relief=False)
    try:
        for i in range(3 * MAX_POINTS):
            probe.usage = i
            guard.sample()
        data = snapshot(guard)
    finally:
        guard.stop()
    assert len(data["samples"]) == MAX_POINTS
    assert data["samples"][-1]["usage"] == 3 * MAX_POINTS - 1


def test_stop_disconnects_the_receivers() -> None:
    """After stop() the timeline holds no receiver on any signal."""
    # Weak receivers that earlier tests left in reference cycles go with any collection:
    # collected first and last, they count neither way.
    gc.collect()
    before = {name: len(sig.receivers) for name, sig in signals.namespace.items()}
    guard = make_guard(FakeProbe())
    guard.stop()
    gc.collect()
    after = {name: len(sig.receivers) for name, sig in signals.namespace.items()}
    assert after == before


def test_timeline_keeps_at_most_its_caps() -> None:
    """However many events, leak reports and tracked types arrive, the timeline keeps at most
    MAX_EVENTS events, MAX_LEAKS leak reports and MAX_TYPES unreleased reports."""
    guard = make_guard(FakeProbe())
    try:
        timeline = Timeline(guard)
        for index in range(MAX_EVENTS + 100):
            timeline.record("pressure", f"event {index}")
        for index in range(MAX_LEAKS + 5):
            timeline._on_leak(guard, report={"kind": "leak", "n": index})
        for index in range(MAX_TYPES + 30):
            report = {"type": f"Client{index}"}
            timeline._on_unreleased(guard, report=SimpleNamespace(to_dict=report.copy))
        assert len(timeline.events) == MAX_EVENTS
        assert timeline.events[-1]["kind"] == "unreleased"  # the newest are the ones kept
        assert len(timeline._leaks) == MAX_LEAKS
        assert len(timeline._unreleased) == MAX_TYPES
    finally:
        guard.stop()
