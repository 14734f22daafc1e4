"""Leak detection: latency at 0.5, 2 and 10 MB/min, false suspicions, and diagnosis cost.

Run: ``python benchmarks/bench_leaks.py [--clean-seconds N] [--leak-timeout N]``.

Every leak and clean scenario runs in its own child process (an RSS figure is a whole
process's) with an installed guard at the default leak settings, all children at once so
the run takes about four minutes. Each leak starts when the warm-up ends; its latency is
the time from that moment to ``leak_suspected``. Then, in this process, an allocation-heavy
loop is timed with tracemalloc off, fully on, and inside a diagnosis window as the detector
opens it, and one sample is timed with and without the detector attached.
Targets: 10 MB/min within 60 s, 2 MB/min within 3 min, zero false suspicions, and
diagnosis windows costing under a fifth of always-on tracemalloc over an hour.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import gc
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import runtime_guard
from runtime_guard import LeakReport, signals
from runtime_guard._install import attach_components
from runtime_guard.config import Config
from runtime_guard.diagnosis import TracemallocSession, census_diff, diff_snapshots, type_census
from runtime_guard.guard import Guard
from runtime_guard.leaks import LeakDetector
from runtime_guard.probes import RssReader

MB = 1_000_000
RATES = (0.5, 2.0, 10.0)
CLEAN = ("idle", "lru_cache", "plateau", "temporaries", "sawtooth", "one_off_step")

_LEAK: list[object] = []
_KEEP: list[object] = []


# -- children ------------------------------------------------------------------------------


def _leak_step(n: int) -> None:
    for i in range(n):
        _LEAK.append([i] * 20)  # the leaking line


def _clean_steps(name: str) -> Any:
    """A function of the step number, called every 0.1 s, for each clean scenario."""
    if name == "idle":
        return lambda i: None

    if name == "lru_cache":

        @functools.lru_cache(maxsize=20_000)
        def render(n: int) -> list[int]:
            return [n] * 20

        return lambda i: [render((i * 100 + j) % 50_000) for j in range(100)]

    if name == "plateau":
        cache: dict[int, object] = {}

        def plateau(i: int) -> None:
            for j in range(100):
                cache[(i * 100 + j) % 30_000] = [i, j] * 10

        return plateau

    if name == "temporaries":

        def temporaries(i: int) -> None:
            big = bytearray(16 * 1024 * 1024)
            small = [[j] * 20 for j in range(20_000)]
            del big, small

        return temporaries

    if name == "sawtooth":
        saw: list[object] = []

        def sawtooth(i: int) -> None:  # fills for 4 s, then is dropped: a 4 s period
            saw.extend([j] * 20 for j in range(2000))
            if i % 40 == 39:
                saw.clear()

        return sawtooth

    if name == "one_off_step":

        def step(i: int) -> None:  # a pool filling once, two windows after the warm-up
            if i == 800:
                _KEEP.append(bytearray(64 * 1024 * 1024))
                _KEEP.extend([j] * 20 for j in range(200_000))

        return step
    raise SystemExit(f"unknown clean scenario {name}")


def child(kind: str, arg: str, seconds: float) -> None:
    """Run one scenario under an installed guard; print one JSON line with the outcome."""
    got: list[tuple[float, LeakReport]] = []

    def receiver(sender: Guard, report: LeakReport) -> None:
        got.append((time.monotonic(), report))

    signals.leak_suspected.connect(receiver)
    rss = RssReader().read()
    guard = runtime_guard.install(memory_limit=rss * 50)
    warmup = guard.config.leak_warmup
    began = time.monotonic()
    leak_start: float | None = None
    step = _clean_steps(arg) if kind == "clean" else None
    per_step = 0
    if kind == "leak":
        rate = float(arg) * MB  # bytes per minute, in steps of 0.1 s
        per_step = max(1, round(rate / 600 / (sys.getsizeof([0] * 20) + 8)))
    i = 0
    next_at = began
    while time.monotonic() - began < seconds:
        now = time.monotonic()
        if kind == "leak":
            if now - began >= warmup:
                if leak_start is None:
                    leak_start = now
                _leak_step(per_step)
                if got:
                    break
        elif step is not None:
            step(i)
        i += 1
        next_at += 0.1
        time.sleep(max(next_at - time.monotonic(), 0))
    guard.flush_signals()
    out: dict[str, Any] = {"kind": kind, "arg": arg, "signals": len(got)}
    if got:
        at, report = got[0]
        out["latency"] = None if leak_start is None else round(at - leak_start, 1)
        out["metric"] = report.metric
        out["rate_mb_per_min"] = round(report.rate_mb_per_min, 2)
        top = report.top_sites[0] if report.top_sites else None
        out["top_site"] = None if top is None else f"{top.filename}:{top.lineno}"
        out["tracemalloc_seconds"] = round(report.tracemalloc_seconds, 2)
        out["heap_walk_seconds"] = round(report.heap_walk_seconds, 3)
        out["summary"] = str(report).splitlines()[0]
    runtime_guard.uninstall()
    print(json.dumps(out), flush=True)


# -- this process: slowdown and per-sample cost --------------------------------------------


def alloc_loop(n: int = 30_000) -> float:
    """An allocation-heavy loop (dicts and lists, most freed, some kept): seconds taken."""
    keep: collections.deque[object] = collections.deque(maxlen=5000)
    begun = time.perf_counter()
    for i in range(n):
        item = {"id": i, "tags": [i, i + 1], "name": f"item-{i}"}
        keep.append(item)
    return time.perf_counter() - begun


def window_loop(frames: int) -> tuple[float, float]:
    """The loop inside a diagnosis window as the detector opens it; (loop s, window s)."""
    begun = time.perf_counter()
    census = type_census()
    session = TracemallocSession(frames)
    session.start()
    before = session.snapshot()
    loop = alloc_loop()
    after = session.snapshot()
    diff_snapshots(before, after)
    del before, after
    census_diff(census, type_census())
    session.stop()
    return loop, time.perf_counter() - begun


def always_loop(frames: int) -> float:
    tracemalloc.start(frames)
    try:
        return alloc_loop()
    finally:
        tracemalloc.stop()


def sample_cost(leak_detection: bool, rounds: int = 20_000) -> float:
    """Median microseconds of one Guard.sample() with the standard components."""
    config = Config.from_options(
        # The always-on part only: a minimum rate no loop reaches keeps diagnosis out.
        {"leak_detection": leak_detection, "leak_warmup": 0, "leak_min_rate": "1TB"},
        environ={},
    )
    guard = Guard(config)
    attach_components(guard)
    try:
        for _ in range(config.history_size):  # a full history, as in a running process
            guard.sample()
        times = []
        for _ in range(5):
            begun = time.perf_counter()
            for _ in range(rounds // 5):
                guard.sample()
            times.append((time.perf_counter() - begun) / (rounds // 5) * 1e6)
        return statistics.median(times)
    finally:
        guard.stop()


def detector_cost(samples: int = 36_000) -> tuple[float, float]:
    """Microseconds the detector adds per sample: (mean, mean at a window's close).

    Its own ``on_sample`` on samples one second apart, so a window closes (and the floors
    are judged) every ``leak_window`` samples, as at the default interval.
    """
    config = Config.from_options({"leak_warmup": 0, "leak_min_rate": "1TB"}, environ={})
    guard = Guard(config)
    detector = LeakDetector(config)
    template = guard.sample()
    feed = [
        dataclasses.replace(template, monotonic=template.monotonic + k, heap_blocks=100_000 + k)
        for k in range(samples)
    ]
    closing = []
    begun = time.perf_counter()
    for k, sample in enumerate(feed):
        if k % int(config.leak_window) == 0:
            t = time.perf_counter()
            detector.on_sample(guard, sample)
            closing.append(time.perf_counter() - t)
        else:
            detector.on_sample(guard, sample)
    total = time.perf_counter() - begun
    guard.stop()
    return total / samples * 1e6, statistics.median(closing) * 1e6


def detection(args: argparse.Namespace, defaults: Config) -> None:
    """Latency and false suspicions, from one child process per scenario."""
    jobs = [("leak", str(rate), args.leak_timeout) for rate in RATES]
    jobs += [("clean", name, args.clean_seconds) for name in CLEAN]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", kind, arg, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for kind, arg, seconds in jobs
    ]
    print(f"running {len(procs)} child processes (about {args.clean_seconds:.0f} s) ...")

    # Meanwhile nothing heavy runs here; the timings below start when the children end.
    results: list[dict[str, Any]] = []
    for proc in procs:
        out, _ = proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        results.append(json.loads(lines[-1]) if lines else {"error": proc.returncode})

    print("\ndetection latency (leak start -> leak_suspected), default settings:")
    for result in results:
        if result.get("kind") != "leak":
            continue
        rate = float(result["arg"])
        target = {10.0: 60.0, 2.0: 180.0}.get(rate)
        latency = result.get("latency")
        verdict = "" if target is None else (" ok" if latency and latency <= target else " MISS")
        print(
            f"  {rate:>4} MB/min: "
            + (
                f"{latency} s (target {target or '-'} s){verdict}; reported "
                f"{result['rate_mb_per_min']} MB/min {result['metric']}, top site "
                f"{result['top_site']}, tracemalloc {result['tracemalloc_seconds']} s, "
                f"heap walks {result['heap_walk_seconds']} s"
                if latency is not None
                else f"not detected within {args.leak_timeout - defaults.leak_warmup:.0f} s"
            )
        )
    false = sum(r.get("signals", 0) for r in results if r.get("kind") == "clean")
    print(f"\nfalse suspicions over {len(CLEAN)} clean scenarios: {false} (target 0)")
    for result in results:
        if result.get("kind") == "clean":
            shown = result.get("summary", "")
            print(f"  {result['arg']:<13} {result['signals']} {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clean-seconds", type=float, default=200.0)
    parser.add_argument("--leak-timeout", type=float, default=260.0)
    parser.add_argument(
        "--overhead-only", action="store_true", help="skip the detection runs (minutes)"
    )
    parser.add_argument("--child", nargs=3, metavar=("KIND", "ARG", "SECONDS"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], float(args.child[2]))
        return

    defaults = Config.from_options({}, environ={})
    print(
        f"defaults: leak_window={defaults.leak_window} s, leak_confirm={defaults.leak_confirm}, "
        f"leak_min_rate={defaults.leak_min_rate / MB} MB/min, leak_warmup={defaults.leak_warmup}"
        f" s, leak_diagnosis_window={defaults.leak_diagnosis_window} s, "
        f"tracemalloc_duty_cycle={defaults.tracemalloc_duty_cycle:.0%}"
    )
    if not args.overhead_only:
        detection(args, defaults)
    gc.collect()
    frames = defaults.tracemalloc_frames
    # Rounds interleave the three cases, so load from other processes hits them alike.
    offs, ons, windows = [], [], []
    for _ in range(5):
        offs.append(alloc_loop())
        ons.append(always_loop(frames))
        windows.append(window_loop(frames))
    base, on = min(offs), min(ons)
    in_window = min(loop for loop, _ in windows)
    window_total = statistics.median(total for _, total in windows)
    slow_on = on / base - 1
    slow_window = in_window / base - 1
    print(f"\nallocation-heavy loop (30,000 dicts; {frames} frames), best of 5:")
    print(f"  tracemalloc off:             {base * 1000:8.1f} ms  (1.00x)")
    print(f"  tracemalloc always on:       {on * 1000:8.1f} ms  ({on / base:.2f}x)")
    print(
        f"  inside a diagnosis window:   {in_window * 1000:8.1f} ms  ({in_window / base:.2f}x);"
        f" whole window incl. snapshots, diff, censuses {window_total * 1000:.0f} ms"
    )
    cap = defaults.tracemalloc_duty_cycle
    one_window = defaults.leak_diagnosis_window / 3600
    print("  cost over an hour, as a share of always-on tracemalloc's cost:")
    print(
        f"    at the duty-cycle cap ({cap:.0%} of wall time): "
        f"{cap * slow_window / slow_on:.3f} (target < 0.2)"
    )
    print(
        f"    one {defaults.leak_diagnosis_window:.0f} s window per hour (one episode): "
        f"{one_window * slow_window / slow_on:.4f}"
    )

    with_detector = sample_cost(True)
    without = sample_cost(False)
    mean_us, closing_us = detector_cost()
    print(
        f"\nGuard.sample() with the standard components: {with_detector:.1f} us with the "
        f"leak detector, {without:.1f} us without ({with_detector - without:+.1f} us, "
        "within the noise of a shared machine)"
    )
    print(
        f"  the detector's own on_sample: {mean_us:.2f} us per sample on average, "
        f"{closing_us:.1f} us when a window closes and the floors are judged"
    )


if __name__ == "__main__":
    main()
