"""The signal namespace and failure-isolating delivery."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from blinker import Namespace

from runtime_guard import signals
from runtime_guard.config import Config
from runtime_guard.guard import Guard
from runtime_guard.testing import FakeProbe

DESIGN_SIGNALS = [
    "sample_taken",
    "pressure_changed",
    "leak_suspected",
    "unreleased_objects",
    "gc_forced",
    "feature_shed",
    "feature_restored",
    "restart_requested",
    "overlap_skipped",
]


def test_every_design_signal_is_in_the_projects_namespace_with_a_payload_doc() -> None:
    """Each signal named in DESIGN.md lives in our own namespace and documents its payload."""
    assert isinstance(signals.namespace, Namespace)
    for name in DESIGN_SIGNALS:
        signal = getattr(signals, name)
        assert signals.namespace[name] is signal
        assert "Payload" in (signal.__doc__ or "")


def test_emit_calls_every_receiver_even_after_one_raises() -> None:
    """emit() goes on past a raising receiver and counts the failure."""
    called: list[str] = []

    def first(sender: Any, **kw: Any) -> None:
        raise ValueError("boom")

    def second(sender: Any, **kw: Any) -> None:
        called.append(kw["task"])

    signals.overlap_skipped.connect(first)
    signals.overlap_skipped.connect(second)
    try:
        failures = signals.emit(signals.overlap_skipped, None, task="job")
    finally:
        signals.overlap_skipped.disconnect(first)
        signals.overlap_skipped.disconnect(second)
    assert failures == 1
    assert called == ["job"]


def test_emit_without_receivers_is_a_no_op() -> None:
    """With nobody connected nothing is called and nothing fails."""
    assert signals.emit(signals.restart_requested, None, reason="x") == 0


def test_receivers_disconnecting_themselves_and_others_while_called() -> None:
    """A receiver that disconnects itself (and another) during delivery raises nothing, is
    not called again, and the receivers still connected keep getting every signal."""
    guard = Guard(Config.from_options({}, environ={}), probe=FakeProbe())
    calls: list[str] = []

    def once(sender: Any, **payload: Any) -> None:
        calls.append("once")
        signals.sample_taken.disconnect(once)
        signals.sample_taken.disconnect(victim)

    def victim(sender: Any, **payload: Any) -> None:
        calls.append("victim")

    def steady(sender: Any, **payload: Any) -> None:
        calls.append("steady")

    for receiver in (once, victim, steady):
        signals.sample_taken.connect(receiver)
    try:
        guard.sample()
        guard.sample()
        assert guard.flush_signals()
    finally:
        for receiver in (once, victim, steady):
            signals.sample_taken.disconnect(receiver)
        guard.stop()
    assert calls.count("once") == 1
    assert calls.count("steady") == 2
    assert calls.count("victim") <= 1  # called only if delivered before ``once`` ran


def test_logged_receiver_failures_are_capped(caplog: pytest.LogCaptureFixture) -> None:
    """Receivers raising ever-new failures are logged at most _LOGGED_MAX times in all."""
    signals._logged.clear()
    receivers = []
    for index in range(signals._LOGGED_MAX + 50):

        def broken(sender: Any, _index: int = index, **payload: Any) -> None:
            raise ValueError(_index)

        receivers.append(broken)
        signals.overlap_skipped.connect(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="runtime_guard"):
            for _ in range(3):
                signals.emit(signals.overlap_skipped, None, task="job")
    finally:
        for receiver in receivers:
            signals.overlap_skipped.disconnect(receiver)
        logged = len(signals._logged)
        signals._logged.clear()
    assert logged == signals._LOGGED_MAX
    assert len([r for r in caplog.records if "raised; ignored" in r.getMessage()]) == logged
