"""Cost of the recycling policy on the sampling path, beside a psutil RSS read in the same run.

Run: ``python benchmarks/bench_recycling.py``. Prints microseconds per sample for the
policy alone (``RecyclePolicy.on_sample``) in its three regimes: usage flat (the usual
case), usage rising at ELEVATED (trend predicted, this worker's figures published to the
runtime directory every sample), and a recycle due but another worker chosen (the other
workers' files and the lock read every sample). The baseline is one
``psutil.Process().memory_info()``, the figure a sample is judged against in
``bench_sampling.py``. The decision regime lasts seconds per recycle; the first two are the
steady cost.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from runtime_guard.recycling import RecyclePolicy
from runtime_guard.sample import Sample
from runtime_guard.testing import FakeProbe, make_guard

MiB = 1024 * 1024
LIMIT = 200 * MiB


def _sample(t: float, usage: float, rss: float) -> Sample:
    fraction = usage / LIMIT
    level = 3 if fraction >= 0.95 else 2 if fraction >= 0.85 else 1 if fraction >= 0.7 else 0
    from runtime_guard import Pressure

    return Sample(
        t,
        time.time(),
        int(rss),
        int(usage),
        LIMIT,
        fraction,
        100_000,
        (0, 0, 0),
        0,
        0.0,
        1,
        Pressure(level),
    )


def per_sample_us(
    step: Callable[[int], Sample],
    policy: RecyclePolicy,
    guard: object,
    *,
    warm: int = 60,
    n: int = 2000,
    rounds: int = 7,
) -> float:
    """Median over rounds of the mean time of one ``on_sample``, in microseconds."""
    i = 0
    for _ in range(warm):
        policy.on_sample(guard, step(i))  # type: ignore[arg-type]
        i += 1
    means = []
    for _ in range(rounds):
        samples = [step(i + k) for k in range(n)]
        i += n
        start = time.perf_counter_ns()
        for sample in samples:
            policy.on_sample(guard, sample)  # type: ignore[arg-type]
        means.append((time.perf_counter_ns() - start) / n / 1000)
    return statistics.median(means)


def main() -> None:
    process = psutil.Process()
    start = time.perf_counter_ns()
    for _ in range(20000):
        process.memory_info()
    psutil_us = (time.perf_counter_ns() - start) / 20000 / 1000
    # Where the container's shared directory is by default: the temporary directory.
    directory = tempfile.mkdtemp(prefix="bench-recycling-")
    guard = make_guard(FakeProbe(limit=LIMIT), relief=False)
    neighbour = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        rows = []
        for name, step in (
            ("usage flat", lambda i: _sample(i * 1.0, 100 * MiB + (i % 3) * 4096, 50 * MiB)),
            # A sawtooth at ELEVATED: the trend is computed and the figures published, and
            # usage never comes within a drain of CRITICAL (it falls back every 20 samples).
            (
                "usage rising, ELEVATED",
                lambda i: _sample(i * 1.0, 145 * MiB + (i % 20) * MiB, 50 * MiB + (i % 20) * MiB),
            ),
            (
                "recycle due, another chosen",
                lambda i: _sample(i * 1.0, 175 * MiB + (i % 2) * 4096, 50 * MiB + i * 1024),
            ),
        ):
            policy = RecyclePolicy(guard.config, directory=os.path.join(directory, name))
            Path(policy._directory or "").mkdir(parents=True, exist_ok=True)
            data = {"pid": neighbour.pid, "started": 0.0, "growth": 900 * MiB, "rising": 900 * MiB}
            Path(policy._directory or "", f"{neighbour.pid}.worker").write_text(
                json.dumps({**data, "updated": time.time() + 3600})
            )
            if name.startswith("recycle due"):
                policy.prediction  # noqa: B018  (the due path is reached through CRITICAL held)
                step_due = step

                def critical(i: int, step_due: Callable[[int], Sample] = step_due) -> Sample:
                    s = step_due(i)
                    return _sample(s.monotonic, 0.96 * LIMIT, s.rss)

                step = critical
            rows.append((name, per_sample_us(step, policy, guard)))
            policy.close(guard)
    finally:
        neighbour.kill()
        neighbour.wait()
        guard.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(
        "RecyclePolicy.on_sample, per sample (median of 7 rounds of 2000, same run; "
        f"shared directory under {tempfile.gettempdir()})"
    )
    print(f"  psutil.Process().memory_info()   {psutil_us:8.2f} us   1.00x (baseline)")
    for name, us in rows:
        print(f"  {name:<32} {us:8.2f} us   {us / psutil_us:.2f}x")


if __name__ == "__main__":
    main()
