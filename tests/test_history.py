"""The bounded history of samples."""

from __future__ import annotations

from runtime_guard.history import History
from runtime_guard.testing import FakeProbe, make_guard


def test_history_keeps_only_the_newest_samples() -> None:
    """Past its size the oldest samples drop out, so memory stays fixed."""
    guard = make_guard(FakeProbe(), history_size=10)
    for i in range(25):
        guard._probe.usage = i  # type: ignore[attr-defined]
        guard.sample()
    guard.stop()
    kept = guard.history.snapshot()
    assert len(kept) == 10
    assert [s.usage for s in kept] == list(range(15, 25))
    assert guard.history.latest() is kept[-1]


def test_since_filters_by_time() -> None:
    """since() returns the samples at or after a monotonic time."""
    guard = make_guard(FakeProbe())
    first = guard.sample()
    second = guard.sample()
    guard.stop()
    assert guard.history.since(second.monotonic) == [second]
    assert guard.history.since(first.monotonic)[0] is first


def test_empty_history() -> None:
    """An empty history has no latest sample and iterates to nothing."""
    history = History(5)
    assert history.latest() is None
    assert list(history) == []
    assert history.maxlen == 5
