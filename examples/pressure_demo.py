"""Install the guard, allocate memory in steps, and print the pressure changes it signals.

Run: ``python examples/pressure_demo.py``. The limit is set to this process's RSS plus
200 MB so the levels are reached on any machine without touching the machine's real limit.
"""

from __future__ import annotations

import time
from typing import Any

import runtime_guard
from runtime_guard import Pressure, signals
from runtime_guard.probes import RssReader

HEADROOM = 200 * 1024 * 1024
STEP = 10 * 1024 * 1024


def on_pressure(guard: runtime_guard.Guard, old: Pressure, new: Pressure, sample: Any) -> None:
    print(f"pressure {old.name:>8} -> {new.name:<8} {sample}", flush=True)


def main() -> None:
    signals.pressure_changed.connect(on_pressure)
    baseline = RssReader().read()
    guard = runtime_guard.install(memory_limit=baseline + HEADROOM, interval=0.05)
    print(f"guard installed: limit {guard.limit / 2**20:.0f} MiB ({guard.health()['sources']})")
    blocks: list[bytearray] = []
    while guard.pressure < Pressure.CRITICAL and len(blocks) * STEP < 2 * HEADROOM:
        blocks.append(bytearray(b"x" * STEP))  # touched pages, so RSS really grows
        time.sleep(0.03)
    time.sleep(0.2)
    print(f"allocated {len(blocks) * STEP / 2**20:.0f} MiB; freeing it")
    blocks.clear()
    deadline = time.monotonic() + 5
    while guard.pressure > Pressure.OK and time.monotonic() < deadline:
        time.sleep(0.05)
    guard.flush_signals()
    print("health:", guard.health()["status"], guard.health()["pressure"])
    runtime_guard.uninstall()


if __name__ == "__main__":
    main()
