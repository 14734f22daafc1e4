"""Tests for runtime_guard._fork: a fork waits for the sampler's round, never for long."""

from __future__ import annotations

import os
import threading
import time

import pytest

from runtime_guard import _fork

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


def test_a_fork_waits_for_a_held_round_to_end() -> None:
    """A fork in one thread while another holds the round starts only after it ends, so the
    child never inherits a half-done round (an import half made, its lock held)."""
    entered = threading.Event()
    state = {"done": False}

    def round_() -> None:
        with _fork.held_off():
            entered.set()
            time.sleep(0.05)  # a real round's import, in progress when the fork is asked
            state["done"] = True

    thread = threading.Thread(target=round_)
    thread.start()
    entered.wait(5)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if state["done"] else 1)
    _, status = os.waitpid(pid, 0)
    thread.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_round_that_never_ends_delays_a_fork_by_fork_wait_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round stuck for good holds a fork up for FORK_WAIT, then the fork goes ahead and
    the child has a lock of its own, free."""
    monkeypatch.setattr(_fork, "FORK_WAIT", 0.1)
    entered, release = threading.Event(), threading.Event()

    def stuck() -> None:
        with _fork.held_off():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=stuck)
    thread.start()
    entered.wait(5)
    try:
        began = time.monotonic()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            free = _fork.held_off().acquire(blocking=False)
            os._exit(0 if free else 1)
        waited = time.monotonic() - began
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
    assert os.waitstatus_to_exitcode(status) == 0
    assert 0.09 <= waited < 2.0


def test_a_fork_from_inside_a_held_block_goes_ahead_at_once() -> None:
    """The lock is re-entrant: code a round calls may fork without waiting on itself."""
    with _fork.held_off():
        began = time.monotonic()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os._exit(0)
        waited = time.monotonic() - began
        os.waitpid(pid, 0)
    assert waited < _fork.FORK_WAIT
