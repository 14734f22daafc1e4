"""The signal namespace and failure-isolating delivery."""

from __future__ import annotations

from typing import Any

from blinker import Namespace

from runtime_guard import signals

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
