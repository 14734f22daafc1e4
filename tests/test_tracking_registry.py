"""The tracking registry: what is tracked, counts with sites, markers, and registries apart."""

from __future__ import annotations

import gc
import json
import logging
import warnings
from typing import Any

import pytest
from tracked import MADE_AT, Resource, make_resources

from runtime_guard import tracking
from runtime_guard.tracking import TrackingRegistry, live_objects, track
from runtime_guard.tracking.component import TrackingComponent


def test_live_objects_counts_states_and_sites() -> None:
    """Live, unreleased, released and collected-without-release counts, with exact sites."""
    name = track(Resource)
    assert name == "tracked.Resource"
    kept = make_resources(5)
    kept[0].close()
    make_resources(3)  # dropped at once, never closed
    gc.collect()
    data = live_objects()[name]
    assert (data["live"], data["unreleased"], data["released"]) == (5, 4, 1)
    assert data["collected_unreleased"] == 3
    assert data["created"] == 8
    site = data["sites"][0]
    assert (site["file"], site["line"]) == MADE_AT
    assert site["count"] == 5 and site["unreleased"] == 4
    assert site["oldest_age"] >= 0
    assert data["collected_sites"][0]["count"] == 3
    json.dumps(live_objects())
    del kept


def test_subclasses_are_counted_once_under_the_most_specific_tracked_class() -> None:
    """Subclass instances count under a tracked parent, or under the subclass if it is tracked."""

    class Child(Resource):
        def __init__(self) -> None:
            super().__init__(1)

    class Grandchild(Child):
        pass

    parent = track(Resource)
    kept: list[Resource] = [Child(), Grandchild()]
    assert live_objects()[parent]["live"] == 2
    child = track(Child, name="child")
    kept += [Child(), Grandchild(), Resource()]
    counts = {k: v["live"] for k, v in live_objects().items()}
    assert counts == {parent: 3, child: 2}
    assert kept[3].value == 1


def test_unreleased_since_lists_instances_created_after_a_marker() -> None:
    """The pytest plugin's view: unreleased instances made after a marker, with sites."""
    track(Resource)
    before = Resource()
    mark = tracking.marker()
    kept = make_resources(2)
    kept[1].close()
    make_resources(1)
    gc.collect()
    found = tracking.unreleased_since(mark)
    assert [i.state for i in found] == ["live", "collected"]
    assert all(i.site.lineno == MADE_AT[1] for i in found)
    assert "collected without release" in str(found[1])
    assert tracking.unreleased_since(mark, collected=False)[0].state == "live"
    del before


def test_track_rejects_bad_arguments() -> None:
    """Bad arguments fail at once with a clear message."""
    with pytest.raises(ValueError, match="max_live"):
        track(Resource, max_live=-1)
    with pytest.raises(ValueError, match="dotted name"):
        track("nodots")
    with pytest.raises(TypeError):
        track(42)  # type: ignore[arg-type]


def test_unpatchable_class_is_warned_about_once(caplog: Any) -> None:
    """A built-in class cannot be patched: one clear warning naming it, nothing raised."""
    caplog.set_level(logging.WARNING, logger="runtime_guard")
    track(bytearray)
    track(bytearray)
    messages = [r.getMessage() for r in caplog.records if "bytearray" in r.getMessage()]
    assert len(messages) == 1 and "cannot be patched" in messages[0]
    assert "builtins.bytearray" not in live_objects()
    assert bytearray(b"x") == b"x"


def test_a_registry_of_its_own_counts_apart_from_the_default_one() -> None:
    """Instances are counted by each registry that tracks their class, and only by those."""
    own = TrackingRegistry()
    name = own.track(Resource)
    kept = make_resources(2)
    assert own.live_objects()[name]["live"] == 2
    assert live_objects() == {}
    track(Resource)
    kept += make_resources(1)
    assert own.counts()[name].live == 3
    assert live_objects()[name]["live"] == 1
    own.untrack_all()
    assert live_objects()[name]["live"] == 1 and own.live_objects() == {}
    del kept


def test_a_component_judges_the_registry_it_is_given() -> None:
    """``TrackingComponent(registry=...)`` reports from that registry, not the process's."""
    from runtime_guard import signals
    from runtime_guard.testing import make_guard

    own = TrackingRegistry()
    guard = make_guard(track_clients=False)
    got: list[Any] = []

    def receiver(sender: Any, report: Any) -> None:
        got.append(report)

    signals.unreleased_objects.connect(receiver)
    try:
        guard.add_component(TrackingComponent(track_clients=False, registry=own))
        name = own.track(Resource, max_live=1)
        kept = make_resources(3)
        guard.sample()
        guard.flush_signals()
        assert [(r.type, r.live) for r in got] == [(name, 3)]
        assert guard.health()["unreleased_objects"] == {
            name: {"live": 3, "unreleased": 3, "collected_unreleased": 0}
        }
        assert live_objects() == {}
        del kept
    finally:
        signals.unreleased_objects.disconnect(receiver)
        guard.stop()
    assert own.tracked_names() == []


def test_a_forked_child_can_track_while_the_parent_held_the_registry_lock() -> None:
    """A fork while another thread holds the registry's lock leaves the child a working one."""
    import os
    import threading

    registry = tracking.default_registry
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with registry._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    try:
        with warnings.catch_warnings():  # Python 3.12 warns of fork() with threads running
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: exit 0 only if tracking works
            code = 1
            try:
                track(Resource)
                code = 0 if tracking.is_tracked(Resource) else 1
            finally:
                os._exit(code)
        status = _wait_or_kill(pid, 30)
    finally:
        release.set()
        holder.join()
    assert status == 0, "the child hung on the lock held at the fork" if status < 0 else status


def _wait_or_kill(pid: int, seconds: float) -> int:
    """The child's exit code, or -9 after killing it when it is still running at the end."""
    import os
    import signal
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -9
