"""Serving through a leak: the guard against no mitigation and the server's own, in real cgroups.

    python benchmarks/bench_service.py                  # every scenario, 120 s each mode
    python benchmarks/bench_service.py --only gunicorn-cache-clients --seconds 60
    python benchmarks/bench_service.py --json out.json  # the figures as JSON too

Needs root and a writable memory cgroup (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``),
and redis-server. Each scenario is a user's app (``benchmarks/service/``) served by gunicorn,
uvicorn or Celery inside a container with a hard 200 MiB limit, the kernel's OOM killer the
judge, under paced load from a separate process (40 calls per second, open loop). Each runs
three times in one go, on the same machine: with no mitigation, with the server's stock one
(gunicorn ``max_requests=400``, uvicorn ``--limit-max-requests 400``, Celery
``worker_max_memory_per_child``: each child's share of the container after the main
process), and with the guard wired as its docs say (default options, ``report_dir`` set).

Per run it prints: the share of calls answered 2xx, 503s, failed calls (reset, refused,
timed out, 5xx other than 503), kernel OOM kills, workers started after the load began
(recycles, graceful or after an OOM kill), p99 latency of the answered calls, the cgroup's
peak usage, and whether a report the guard wrote named each leak's line (for ``clients``,
the client's creation site). The machine is shared: p99 moves with other work, so compare
within one run, and repeat what matters.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "service"))
sys.path.insert(0, str(HERE.parent / "tests"))

import containers  # noqa: E402  (tests/containers.py: the cgroup harness)
import scenario as sc  # noqa: E402  (benchmarks/service/scenario.py)
import servers  # noqa: E402  (tests/servers.py: redis-server)

MiB = 1024 * 1024

_STOCK_GUNICORN = {"max_requests": "400"}
_STOCK_UVICORN = {"max_requests": "400"}
# billiard's budget in KiB: each child's share of the 200 MiB container after the main
# process (about 53 MiB here): (200 - 53) / 2 children, about 73 MiB.
_STOCK_CELERY = {"max_memory_kb": "75000"}

SCENARIOS = [
    sc.Scenario("gunicorn-cache-clients", "gunicorn", "cache,clients", stock=_STOCK_GUNICORN),
    sc.Scenario("gunicorn-objects", "gunicorn", "objects", stock=_STOCK_GUNICORN),
    sc.Scenario("gunicorn-buffers", "gunicorn", "buffers", stock=_STOCK_GUNICORN),
    sc.Scenario("gunicorn-cache-slow", "gunicorn", "cache", 25.0, stock=_STOCK_GUNICORN),
    sc.Scenario("gunicorn-cache-fast", "gunicorn", "cache", 100.0, stock=_STOCK_GUNICORN),
    sc.Scenario("gthread-cache-clients", "gthread", "cache,clients", stock=_STOCK_GUNICORN),
    sc.Scenario("gunicorn-clean", "gunicorn", "", stock=_STOCK_GUNICORN),
    sc.Scenario("gunicorn-spike", "gunicorn", "", spike_at=40.0, stock=_STOCK_GUNICORN),
    sc.Scenario("uvicorn-cache-clients", "uvicorn", "cache,clients", stock=_STOCK_UVICORN),
    sc.Scenario("uvicorn-objects", "uvicorn", "objects", stock=_STOCK_UVICORN),
    # Workers that each keep a 20 MB model: the headroom --limit-max-requests needs is gone.
    sc.Scenario(
        "uvicorn-big-workers", "uvicorn", "cache,clients", stock=_STOCK_UVICORN, model_mb=20
    ),
    sc.Scenario("uvicorn-clean", "uvicorn", "", stock=_STOCK_UVICORN),
    sc.Scenario("uvicorn-spike", "uvicorn", "", spike_at=40.0, stock=_STOCK_UVICORN),
    sc.Scenario("celery-cache-clients", "celery", "cache,clients", stock=_STOCK_CELERY),
    sc.Scenario("celery-buffers", "celery", "buffers", stock=_STOCK_CELERY),
    sc.Scenario("celery-clean", "celery", "", stock=_STOCK_CELERY),
]

_STOCK_NAMES = {
    "gunicorn": "max_requests=400",
    "gthread": "max_requests=400",
    "uvicorn": "--limit-max-requests 400",
    "celery": "max_memory_per_child",
}


def _named(result: sc.Result, shapes: list[str]) -> str:
    if result.mode != "guard" or not shapes:
        return "-"
    return " ".join(f"{shape}:{'yes' if result.named.get(shape) else 'no'}" for shape in shapes)


def print_table(scenario: sc.Scenario, results: list[sc.Result]) -> None:
    """One scenario's runs as a table."""
    print(
        f"\n{scenario.name}: {scenario.server}, {scenario.workers} workers, leak "
        f"{scenario.leak or 'none'}"
        + (f" {scenario.leak_kb:g} KB/call" if scenario.leak else "")
        + (f", one 50 MiB spike at {scenario.spike_at:g} s" if scenario.spike_at else "")
        + (f", {scenario.model_mb} MB model per worker" if scenario.model_mb else "")
        + f", {scenario.rate:g} calls/s for {results[0].calls / scenario.rate:.0f} s, "
        f"limit {scenario.limit_mib} MiB"
    )
    header = (
        f"  {'mode':<26} {'2xx':>22} {'503':>5} {'failed':>6} {'OOM':>4} {'recycles':>8} "
        f"{'p99 ms':>7} {'peak MiB':>8}  named (recycle reports)"
    )
    print(header)
    for result in results:
        mode = {"none": "no guard", "stock": _STOCK_NAMES[scenario.server]}.get(
            result.mode, "runtime_guard"
        )
        p99 = "-" if result.p99 is None else f"{result.p99 * 1000:.0f}"
        named = _named(result, scenario.leaks)
        if result.mode == "guard":
            named += f" ({result.recycle_reports})"
        answered = f"{result.ok:,} of {result.calls:,} ({result.ok_share:.1%})"
        print(
            f"  {mode:<26} {answered:>22} {result.refused:>5} {result.failed:>6} "
            f"{result.oom_kills:>4} {result.recycles:>8} {p99:>7} "
            f"{result.peak_usage / MiB:>8.0f}  {named}"
        )
        if result.errors:
            print(f"  {'':<26} failures: {result.errors}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="scenario name (repeatable)")
    parser.add_argument("--modes", default=",".join(sc.MODES), help="none,stock,guard")
    parser.add_argument("--seconds", type=float, default=None, help="load seconds per run")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    parser.add_argument("--keep", metavar="DIR", help="keep logs and reports under DIR")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if not chosen:
        print(f"no scenario named {args.only}; known: {[s.name for s in SCENARIOS]}")
        return 2
    try:
        containers.find_memory_controller()
        redis = servers.start_redis()
    except (containers.Unavailable, servers.Unavailable) as exc:
        print(f"skipped: {exc}")
        return 0
    out: list[dict[str, object]] = []
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-service-"))
    try:
        for scenario in chosen:
            results = []
            for mode in args.modes.split(","):
                container = containers.start_container(scenario.limit_mib * MiB, scenario.name)
                try:
                    workdir = root / f"{scenario.name}-{mode}-{int(time.time())}"
                    result = sc.run(
                        scenario, mode, container, redis.url, workdir, seconds=args.seconds
                    )
                finally:
                    container.stop()
                results.append(result)
                out.append(result.to_dict())
            print_table(scenario, results)
            sys.stdout.flush()
    finally:
        redis.stop()
    print(f"\nlogs and reports: {root}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
