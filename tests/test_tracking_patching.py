"""Wrappers on tracked classes: put on and taken off exactly, and what each counts."""

from __future__ import annotations

import gc
import inspect
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tracked import AsyncResource, Resource

from runtime_guard import tracking
from runtime_guard.tracking import live_objects, track


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

    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "closed\n"
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, (
        result.stderr
    )
