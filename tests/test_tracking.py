"""Tracked classes: live counts, creation sites, release states, the component's judgement."""

from __future__ import annotations

import gc
import importlib
import inspect
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runtime_guard
from runtime_guard import signals, tracking
from runtime_guard.testing import make_guard
from runtime_guard.tracking import UnreleasedReport, live_objects, track
from runtime_guard.tracking import component as tracking_component
from runtime_guard.tracking.clients import watcher
from runtime_guard.tracking.component import judge_growth


@pytest.fixture(autouse=True)
def _untrack() -> Iterator[None]:
    tracking.untrack_all()  # a guard another test left unstopped may still track clients
    yield
    tracking.untrack_all()


class Resource:
    def __init__(self, value: int = 0) -> None:
        self.value = value

    def close(self) -> None:
        self.value = -1


class AsyncResource:
    async def aclose(self) -> None:
        pass


def _line(text: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith(f"# {text}"))


def make_resources(n: int) -> list[Resource]:
    return [Resource(i) for i in range(n)]  # resources are made here


def _received() -> tuple[list[UnreleasedReport], Any]:
    got: list[UnreleasedReport] = []

    def receiver(sender: Any, report: UnreleasedReport) -> None:
        got.append(report)

    signals.unreleased_objects.connect(receiver)
    return got, receiver


def test_live_objects_counts_states_and_sites() -> None:
    """Live, unreleased, released and collected-without-release counts, with exact sites."""
    name = track(Resource)
    assert name == f"{__name__}.Resource"
    kept = make_resources(5)
    kept[0].close()
    make_resources(3)  # dropped at once, never closed
    gc.collect()
    data = live_objects()[name]
    assert (data["live"], data["unreleased"], data["released"]) == (5, 4, 1)
    assert data["collected_unreleased"] == 3
    assert data["created"] == 8
    site = data["sites"][0]
    assert (site["file"], site["line"]) == (__file__, _line("resources are made here"))
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


def test_untrack_restores_the_class_exactly() -> None:
    """After untracking, the class dict is identical and construction runs no wrapper."""

    class Plain:
        def close(self) -> None:
            pass

    before = list(Resource.__dict__.items())
    before_plain = list(Plain.__dict__.items())
    original_init = Resource.__init__
    track(Resource)
    track(Plain)
    assert Resource.__init__ is not original_init
    assert "__init__" in Plain.__dict__
    assert tracking.untrack(Resource)
    assert tracking.untrack(Plain)
    assert list(Resource.__dict__.items()) == before
    assert list(Plain.__dict__.items()) == before_plain
    assert Resource.__init__ is original_init
    Resource()
    assert live_objects() == {}


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


def test_failing_init_is_not_counted() -> None:
    """An instance whose ``__init__`` raised is not a live object."""

    class Fails:
        def __init__(self) -> None:
            raise RuntimeError("no")

    name = track(Fails)
    with pytest.raises(RuntimeError):
        Fails()
    assert live_objects()[name]["created"] == 0
    assert live_objects()[name]["live"] == 0


def test_slots_class_without_weakref_falls_back_to_counting(caplog: Any) -> None:
    """A class whose instances cannot be weak-referenced is counted, with a warning naming it."""

    class Slotted:
        __slots__ = ("x",)

        def __init__(self) -> None:
            self.x = 1

        def close(self) -> None:
            pass

    caplog.set_level(logging.WARNING, logger="runtime_guard")
    name = track(Slotted)
    kept = [Slotted() for _ in range(4)]
    kept[0].close()
    data = live_objects()[name]
    assert (data["created"], data["live"], data["unreleased"]) == (4, 3, 3)
    assert data["sites"][0]["file"] == __file__
    assert sum(name in r.getMessage() for r in caplog.records) == 1
    track(Slotted)
    assert sum(name in r.getMessage() for r in caplog.records) == 1


def test_unpatchable_class_is_warned_about_once(caplog: Any) -> None:
    """A built-in class cannot be patched: one clear warning naming it, nothing raised."""
    caplog.set_level(logging.WARNING, logger="runtime_guard")
    track(bytearray)
    track(bytearray)
    messages = [r.getMessage() for r in caplog.records if "bytearray" in r.getMessage()]
    assert len(messages) == 1 and "cannot be patched" in messages[0]
    assert "builtins.bytearray" not in live_objects()
    assert bytearray(b"x") == b"x"


def test_release_via_del_counts_as_collected_without_release() -> None:
    """A finalizer that closes the object (redis does) is not a release by the program."""

    class ClosesOnDel(Resource):
        def __del__(self) -> None:
            self.close()

    name = track(ClosesOnDel)
    ClosesOnDel()
    gc.collect()
    data = live_objects()[name]
    assert (data["released"], data["collected_unreleased"]) == (0, 1)


@pytest.mark.asyncio
async def test_async_release_method_stays_a_coroutine_function() -> None:
    """Patched ``aclose`` is still a coroutine function and awaiting it releases."""
    name = track(AsyncResource)
    assert inspect.iscoroutinefunction(AsyncResource.aclose)
    obj = AsyncResource()
    assert live_objects()[name]["unreleased"] == 1
    await obj.aclose()
    assert live_objects()[name]["released"] == 1


def test_dotted_name_is_tracked_when_its_module_is_imported(tmp_path: Path) -> None:
    """``track("pkg.mod.Class")`` before the import tracks the class once the module loads."""
    (tmp_path / "rg_late_module.py").write_text(
        "class Thing:\n    def close(self):\n        pass\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        track("rg_late_module.Thing", max_live=1)
        assert watcher in sys.meta_path
        assert "rg_late_module.Thing" not in live_objects()
        module = importlib.import_module("rg_late_module")
        assert module.__loader__.__class__.__name__ == "SourceFileLoader"
        thing = module.Thing()
        data = live_objects()["rg_late_module.Thing"]
        assert data["live"] == 1 and data["max_live"] == 1
        assert watcher not in sys.meta_path
        thing.close()
        assert live_objects()["rg_late_module.Thing"]["released"] == 1
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("rg_late_module", None)


def test_import_watcher_ignores_other_modules() -> None:
    """Unwatched imports get nothing from the hook: it answers None without looking further."""
    track("rg_never_imported_module.Thing")
    assert watcher.find_spec("json", None) is None
    assert watcher.find_spec("rg_unrelated", None) is None
    assert watcher.watching() == ["rg_never_imported_module"]


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
    assert all(i.site.lineno == _line("resources are made here") for i in found)
    assert "collected without release" in str(found[1])
    assert tracking.unreleased_since(mark, collected=False)[0].state == "live"
    del before


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
        assert report.sites[0]["line"] == _line("resources are made here")
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
        assert got[0].collected_sites[0]["line"] == _line("resources are made here")
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
    report = tracking.build_report(f"{__name__}.Resource", ["growing"], growth=30.0)
    assert report is not None
    data = json.loads(json.dumps(report.to_dict()))
    assert data["live"] == 2 and data["reasons"] == ["growing"]
    assert "growing 30/min" in str(report) and "none released" in str(report)
    del kept


def test_track_rejects_bad_arguments() -> None:
    """Bad arguments fail at once with a clear message."""
    with pytest.raises(ValueError, match="max_live"):
        track(Resource, max_live=-1)
    with pytest.raises(ValueError, match="dotted name"):
        track("nodots")
    with pytest.raises(TypeError):
        track(42)  # type: ignore[arg-type]


def test_collected_without_release_tables_are_capped() -> None:
    """Instances collected unreleased from more distinct sites than the cap are all counted,
    but the per-site table holds at most _MAX_COLLECTED_SITES sites and the recent-collection
    memory at most _RECENT_COLLECTED records."""
    from runtime_guard.tracking import registry as _registry

    class Dropped(Resource):
        pass

    name = track(Dropped)
    _registry.marker()
    sites = _registry._MAX_COLLECTED_SITES + 44
    for index in range(sites):
        code = compile("Dropped()", f"/srv/app/site_{index}.py", "eval")
        eval(code, {"Dropped": Dropped})
    for _ in range(_registry._RECENT_COLLECTED + 200):
        Dropped()
    gc.collect()
    entry = _registry._entries[name]
    assert entry.collected_unreleased == sites + _registry._RECENT_COLLECTED + 200
    assert len(entry.collected_sites) == _registry._MAX_COLLECTED_SITES
    assert len(_registry._recent_collected) == _registry._RECENT_COLLECTED


def test_component_keeps_at_most_its_report_and_point_caps() -> None:
    """Over many samples and episodes the tracking component keeps 200 points per type and
    its last 20 reports, however long it runs."""

    class Pooled(Resource):
        pass

    name = track(Pooled, max_live=0)
    guard = make_guard()
    try:
        component = guard.component("tracking")
        assert isinstance(component, tracking.TrackingComponent)
        for _ in range(25):
            held = Pooled()
            guard.sample()  # over max_live: an episode and its report
            held.close()
            del held
            gc.collect()
            for _ in range(tracking_component.QUIET_SAMPLES):
                guard.sample()
        assert len(component.reports) == 20
        assert len(component._states[name].points) == 200
    finally:
        guard.stop()


def test_a_release_called_with_no_caller_frame_still_closes(tmp_path: Path) -> None:
    """close() run by atexit (or any C callback, with no Python caller) closes, silently."""
    script = tmp_path / "shutdown.py"
    script.write_text(
        "import atexit\n"
        "from runtime_guard import tracking\n"
        "class Client:\n"
        "    def close(self):\n"
        "        print('closed')\n"
        "tracking.track(Client)\n"
        "atexit.register(Client().close)\n"
    )
    import subprocess

    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "closed\n"
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, (
        result.stderr
    )
