"""Cost of publishing a worker's figures for the container view, beside the sample itself.

Run: ``python benchmarks/bench_container.py [--rounds N] [--gap S]``. Each round sleeps
``gap`` seconds (caches go cold, as between two samples of the sampler), takes one real
sample with every standard component, then publishes it at once, as the sampler does; both
are timed in the same round. Printed: medians and 90th percentiles of each, the ratio to
the sample, the health rewrite the publisher makes every few seconds (and on a level
change) and its share per sample at the default interval, the naive alternative (JSON of
the health written on every sample), and what a probe that reads the view costs.
Targets (judged by reading): publishing under 10 % of a sample.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from runtime_guard._install import attach_components
from runtime_guard.config import Config
from runtime_guard.container import SLOW_REFRESH, ContainerPublisher, read_container, worker_health
from runtime_guard.guard import Guard
from runtime_guard.integrations._http import health_response, ready_response
from runtime_guard.pressure import Pressure
from runtime_guard.sample import Sample

Publish = Callable[[Guard, Sample], object]


def paired(
    guard: Guard, publish: Publish, rounds: int, gap: float
) -> tuple[list[float], list[float]]:
    """Per round: microseconds of one sample, then of publishing it right after."""
    samples, published = [], []
    for _ in range(rounds):
        time.sleep(gap)
        start = time.perf_counter_ns()
        sample = guard.sample()
        middle = time.perf_counter_ns()
        publish(guard, sample)
        end = time.perf_counter_ns()
        samples.append((middle - start) / 1000)
        published.append((end - middle) / 1000)
    return samples, published


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def row(name: str, values: list[float], sample: float) -> str:
    median = statistics.median(values)
    return (
        f"  {name:<40} {median:8.2f} us  p90 {p90(values):8.2f} us  "
        f"{median / sample * 100:6.1f} % of a sample"
    )


OTHER_WORKER = textwrap.dedent(
    """
    import sys, time
    import runtime_guard
    guard = runtime_guard.install(interval=0.2)
    while len(guard.history) < 2:
        time.sleep(0.02)
    print("ready", flush=True)
    sys.stdin.readline()
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds asleep per round")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="rg-bench-container-"))
    guard = Guard(Config.from_options({}, environ={}))
    attach_components(guard)
    guard.sample()
    fast = ContainerPublisher(str(directory), process_wide=False, slow_refresh=float("inf"))
    rewrite = ContainerPublisher(str(directory / "rewrite"), process_wide=False, slow_refresh=0)
    naive_file = directory / "naive.json"

    def naive(guard: Guard, sample: Sample) -> None:
        data = json.dumps(worker_health(guard)).encode()
        fd = os.open(naive_file, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)

    fast.on_sample(guard, guard.sample())  # opens the page: once per process
    rewrite.on_sample(guard, guard.sample())
    results = {}
    for name, publish in (
        ("publish (six stores into the page)", fast.on_sample),
        ("health rewrite (every 30 s, on changes)", rewrite.on_sample),
        ("naive: health as JSON, every sample", naive),
    ):
        results[name] = paired(guard, publish, args.rounds, args.gap)
    samples = [s for sampled, _ in results.values() for s in sampled]
    sample = statistics.median(samples)
    print(f"publishing for the container view, {args.rounds} rounds each, {args.gap} s asleep")
    print(
        f"  {'Guard.sample(), all components':<40} {sample:8.2f} us  p90 {p90(samples):8.2f} us"
        "  (baseline, same rounds)"
    )
    for name, (_, published) in results.items():
        print(row(name, published, sample))
    per = statistics.median(results["publish (six stores into the page)"][1])
    refresh = statistics.median(results["health rewrite (every 30 s, on changes)"][1])
    amortized = per + refresh / (SLOW_REFRESH / 1.0)
    print(
        f"  {'per sample at interval 1 s (amortized)':<40} {amortized:8.2f} us"
        f"  {'':>16}{amortized / sample * 100:6.1f} % of a sample"
    )

    # A probe's cost: /readyz reads every worker's page; /health only this guard.
    others = [
        subprocess.Popen(
            [sys.executable, "-c", OTHER_WORKER],
            env={**os.environ, "RUNTIME_GUARD_CONTAINER_DIR": str(directory)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for proc in others:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("ready")
        assert len(read_container(str(directory)).workers) == 4  # three others and this one
        fast.directory = str(directory)

        def timed(fn: Callable[[], object], count: int = 200) -> float:
            times = []
            for _ in range(count):
                start = time.perf_counter_ns()
                fn()
                times.append((time.perf_counter_ns() - start) / 1000)
            return statistics.median(times)

        guard.add_component(fast)
        health = timed(lambda: health_response(guard, False))
        ready = timed(lambda: ready_response(guard, Pressure.CRITICAL))
        print("a probe (not on the sampler's path), container of 4 workers")
        print(f"  {'/health (this worker)':<40} {health:8.2f} us")
        print(f"  {'/readyz (every worker of the container)':<40} {ready:8.2f} us")
    finally:
        for proc in others:
            proc.communicate("\n", timeout=10)
        guard.stop()
        fast.remove()
        rewrite.remove()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
