"""Signal delivery on the dispatcher thread."""

from __future__ import annotations

import threading
from typing import Any

from runtime_guard import signals
from runtime_guard._dispatch import MAX_QUEUED, Dispatcher
from runtime_guard.config import Config
from runtime_guard.guard import Guard
from runtime_guard.testing import FakeProbe


def test_signals_arrive_in_order() -> None:
    """Queued signals are delivered in the order they were sent."""
    got: list[int] = []

    def receiver(sender: Any, **kw: Any) -> None:
        got.append(kw["reason"])

    signals.restart_requested.connect(receiver)
    dispatcher = Dispatcher(sender=None)
    dispatcher.start()
    try:
        for i in range(100):
            dispatcher.send(signals.restart_requested, reason=i)
        assert dispatcher.flush()
    finally:
        dispatcher.stop()
        signals.restart_requested.disconnect(receiver)
    assert got == list(range(100))


def test_queue_is_bounded_when_receivers_fall_behind() -> None:
    """A stuck receiver makes old signals drop, never unbounded growth."""
    release = threading.Event()
    got: list[int] = []

    def stuck(sender: Any, **kw: Any) -> None:
        release.wait(5)
        got.append(kw["reason"])

    signals.restart_requested.connect(stuck)
    dispatcher = Dispatcher(sender=None, maxlen=10)
    dispatcher.start()
    try:
        for i in range(100):
            dispatcher.send(signals.restart_requested, reason=i)
        assert len(dispatcher._queue) <= 10
        release.set()
        assert dispatcher.flush()
    finally:
        dispatcher.stop()
        signals.restart_requested.disconnect(stuck)
    assert dispatcher.dropped >= 80
    assert got[-1] == 99


def test_send_without_receivers_queues_nothing() -> None:
    """With nobody connected, send() does not even queue."""
    dispatcher = Dispatcher(sender=None)
    dispatcher.send(signals.overlap_skipped, task="x")
    assert len(dispatcher._queue) == 0


def test_a_receiver_causing_its_own_signal_does_not_loop() -> None:
    """A receiver that triggers the signal it receives gets it once, not forever."""
    calls: list[int] = []
    dispatcher = Dispatcher(sender=None)

    def echo(sender: Any, **kw: Any) -> None:
        calls.append(1)
        dispatcher.send(signals.restart_requested, reason="again")

    signals.restart_requested.connect(echo)
    dispatcher.start()
    try:
        dispatcher.send(signals.restart_requested, reason="first")
        assert dispatcher.flush()
    finally:
        dispatcher.stop()
        signals.restart_requested.disconnect(echo)
    assert calls == [1]
    assert dispatcher.suppressed == 1


def test_a_guards_signal_backlog_is_capped_at_max_queued() -> None:
    """A guard whose receiver is stuck keeps at most MAX_QUEUED (1,000) signals queued,
    while sampling goes on and the drops are counted."""
    guard = Guard(Config.from_options({}, environ={}), probe=FakeProbe())
    release = threading.Event()

    def stuck(sender: Any, **kw: Any) -> None:
        release.wait(10)

    signals.sample_taken.connect(stuck)
    try:
        guard._dispatcher.start()
        for _ in range(MAX_QUEUED + 500):
            guard.sample()
        assert MAX_QUEUED == 1000
        assert len(guard._dispatcher._queue) <= MAX_QUEUED
        assert guard._dispatcher.dropped >= 499
        assert len(guard.history) == MAX_QUEUED + 500
        release.set()
        assert guard.flush_signals(30)
    finally:
        release.set()
        signals.sample_taken.disconnect(stuck)
        guard.stop()
