"""The guard's own memory over a soak: samples, signals, tracked objects, install cycles.

Run: ``python benchmarks/bench_soak.py [--scale 1.0]``. At scale 1 it takes 10**6 samples,
sends 10**5 signals, creates and releases 10**4 tracked objects and runs 1,000
install/uninstall cycles. For each phase it prints the memory that tracemalloc attributes
to runtime_guard/ files after a warm-up tenth and at the end: flat means bounded.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import runtime_guard
from runtime_guard import signals
from runtime_guard._units import format_size
from runtime_guard.testing import FakeProbe, make_guard

PACKAGE = os.path.dirname(runtime_guard.__file__)
FILTER = [tracemalloc.Filter(True, os.path.join(PACKAGE, "*"))]


def guard_bytes() -> int:
    """Bytes currently allocated from lines in runtime_guard/ (after a full collection)."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(FILTER)
    return sum(stat.size for stat in snapshot.statistics("filename"))


def phase(
    name: str, total: int, step: Callable[[int], None], warm: int = 0
) -> tuple[str, int, int, int, int, float]:
    """Run ``step(i)`` ``total`` times; measure after ``warm`` steps (default a tenth), at
    half-way and at the end. Caps fill during the first half; the second half shows whether
    anything grows past them."""
    warm = min(warm or max(total // 10, 1), total)
    half = max(total // 2, warm)
    start = time.perf_counter()
    for i in range(warm):
        step(i)
    after_warm = guard_bytes()
    for i in range(warm, half):
        step(i)
    at_half = guard_bytes()
    for i in range(half, total):
        step(i)
    end = guard_bytes()
    return name, total, after_warm, at_half, end, time.perf_counter() - start


class Client:
    """A client-like class with a close(), tracked like the known clients."""

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full soak")
    args = parser.parse_args()
    n = {
        k: max(int(v * args.scale), 10)
        for k, v in {"samples": 10**6, "signals": 10**5, "objects": 10**4, "cycles": 1000}.items()
    }

    tracemalloc.start(1)
    rows = []

    probe = FakeProbe()
    guard = make_guard(probe, history_size=3600)

    def sample(i: int) -> None:
        # A sawtooth that crosses every threshold, so levels change and components act.
        probe.set_fraction((i % 1000) / 1000)
        guard.sample()

    # Warm-up past the history's size: until then the ring buffer is meant to grow.
    rows.append(phase("samples (all components)", n["samples"], sample, warm=5000))

    received = [0]

    def receiver(sender: Any, **payload: Any) -> None:
        received[0] += 1

    signals.restart_requested.connect(receiver)
    guard.start()

    def signal(i: int) -> None:
        guard.send(signals.restart_requested, reason="soak")
        if i % 1000 == 999:
            guard.flush_signals()

    rows.append(phase("signals delivered", n["signals"], signal))
    guard.flush_signals()
    signals.restart_requested.disconnect(receiver)
    guard.stop()

    runtime_guard.track(Client)

    def tracked(i: int) -> None:
        Client().close() if i % 2 else Client()

    rows.append(phase("tracked objects made+dropped", n["objects"], tracked))
    from runtime_guard import tracking

    tracking.untrack(Client)

    def cycle(i: int) -> None:
        runtime_guard.install(interval=0.5).sample()
        runtime_guard.uninstall()

    rows.append(phase("install/uninstall cycles", n["cycles"], cycle))
    tracemalloc.stop()

    print(
        f"{'phase':30} {'count':>9} {'after warm-up':>14} {'half-way':>10} {'at end':>10} "
        f"{'2nd half':>10} {'secs':>6}"
    )
    for name, total, warm, half, end, secs in rows:
        print(
            f"{name:30} {total:>9,} {format_size(warm):>14} {format_size(half):>10} "
            f"{format_size(end):>10} {format_size(end - half):>10} {secs:>6.1f}"
        )
    print(f"signals received: {received[0]:,}")


if __name__ == "__main__":
    main()
