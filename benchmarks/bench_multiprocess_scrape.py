"""Prometheus multiprocess scrape: the cost of sweeping dead workers' files at each scrape.

Run: ``python benchmarks/bench_multiprocess_scrape.py [--workers N] [--rounds N]``.

A scrape in multiprocess mode reads every worker's files (prometheus_client's
``MultiProcessCollector``); the guard first lists the directory and asks, for each pid with
live-gauge files, whether it still runs. Real worker processes write the guard's figures
(``--workers`` of them, default 8), then scrapes are timed in paired rounds with and
without the sweep, in this one run; the figure to read is the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

WORKER = """
import os, sys, time
from runtime_guard.integrations import prometheus
import runtime_guard
runtime_guard.install(interval=0.05)
prometheus.install_metrics()
path = os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], f"gauge_liveall_{os.getpid()}.db")
while not os.path.exists(path):
    time.sleep(0.02)
time.sleep(0.2)
print("ready", flush=True)
sys.stdin.read()  # serve until the benchmark closes stdin
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--scrapes", type=int, default=50, help="scrapes timed per round")
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="rg-prom-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    from runtime_guard.integrations import prometheus

    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(args.workers)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline() == b"ready\n"

        def plain() -> None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            generate_latest(registry)

        def swept() -> None:
            generate_latest(prometheus.scrape_registry())

        per_scrape: dict[str, list[float]] = {"without sweep": [], "with sweep": []}
        for _ in range(args.rounds):
            for name, scrape in (("without sweep", plain), ("with sweep", swept)):
                start = time.perf_counter()
                for _ in range(args.scrapes):
                    scrape()
                per_scrape[name].append((time.perf_counter() - start) / args.scrapes)
        files = len(os.listdir(directory))
        print(f"{args.workers} worker processes, {files} files, {args.rounds} paired rounds")
        base = statistics.median(per_scrape["without sweep"])
        for name, times in per_scrape.items():
            median = statistics.median(times)
            print(f"  {name:14s} {median * 1e3:7.3f} ms per scrape   x{median / base:.2f}")
    finally:
        for worker in workers:
            if worker.stdin is not None:
                worker.stdin.close()
            worker.wait(30)


if __name__ == "__main__":
    main()
