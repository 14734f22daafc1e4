"""A guard on a hand-driven clock and the signals it sent, for the resource tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blinker import NamedSignal

from runtime_guard.guard import Guard
from runtime_guard.testing import ManualClock, make_guard


def line_of(path: str, text: str) -> int:
    """The line of ``path`` that ends with the comment ``# text``."""
    lines = Path(path).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith(f"# {text}"))


@dataclass
class Clocked:
    """The guard, its clock, and each signal's payloads in the order sent."""

    guard: Guard
    clock: ManualClock
    sent: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def after(self, seconds: float) -> None:
        """Move the clock on, take a sample and deliver its signals."""
        self.clock.now += seconds
        self.guard.sample()
        self.guard.flush_signals()


@contextmanager
def clocked(
    signals: list[NamedSignal], registries: tuple[Any, ...] = (), **options: Any
) -> Iterator[Clocked]:
    """A guard made by ``make_guard(**options)`` on a hand-driven clock that ``registries``
    (objects with a ``clock``) share; the payloads of ``signals`` are collected."""
    clock = ManualClock()
    for registry in registries:
        registry.clock = clock
    found = Clocked(make_guard(clock=clock, **options), clock)
    receivers: list[tuple[NamedSignal, Callable[..., None]]] = []
    for signal in signals:
        payloads = found.sent.setdefault(signal.name, [])

        def receive(sender: Any, _into: list[dict[str, Any]] = payloads, **payload: Any) -> None:
            _into.append(payload)

        signal.connect(receive)
        receivers.append((signal, receive))
    try:
        yield found
    finally:
        for signal, receive in receivers:
            signal.disconnect(receive)
        found.guard.stop()
        for registry in registries:
            registry.clock = time.monotonic
