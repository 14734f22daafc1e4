"""Leak detection: latency at 0.5, 2 and 10 MB/min, false suspicions, and diagnosis cost;
and ``--production``: real servers serving the apps of ``benchmarks/leakapps``.

Run: ``python benchmarks/bench_leaks.py [--clean-seconds N] [--leak-timeout N]``, or
``python benchmarks/bench_leaks.py --production [--jobs 3] [--apps a,b] [--servers sync]``.

The production table serves each leaking app (ten shapes of leak) and each clean app under
gunicorn sync, gunicorn gthread and uvicorn in a memory cgroup of its own, with paced load
from another process (20 requests/s, 30 % on the route under study, about 2 MB/min when it
leaks) and the guard at its default settings. Per run it prints the seconds from the end of
the warm-up to the first leak report, whether its top site is the leaking line, whether its
holder is the growing collection, the rank of the leaking route, and the holder's retained
size against pympler's full size of it read from the app afterwards. Then the p99 latency
of one leaking app with and without the guard, the same requests sent to both at the same
moments, and the cost of route attribution per request beside the bare middleware.

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
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import runtime_guard
from runtime_guard import LeakReport, signals
from runtime_guard._install import attach_components
from runtime_guard.config import Config
from runtime_guard.diagnosis import TracemallocSession, census_diff, diff_snapshots, type_census
from runtime_guard.guard import Guard
from runtime_guard.leaks.detector import LeakDetector
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


# -- production: real servers, real apps, load from another process -----------------------

# Bytes one request to the route under study keeps: about 2 MB/min at 20 requests/s with
# 30 % of them on that route.
_PER_REQUEST = 5600


def production(args: argparse.Namespace, defaults: Config) -> None:
    """The leaking and clean apps of ``benchmarks/leakapps`` under gunicorn and uvicorn."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from leakapps import CLEAN, SHAPES
    from leakapps.harness import SERVERS, Outcome, run_case, run_pair

    warmup = defaults.leak_warmup
    env = {"LEAKAPP_BYTES": str(_PER_REQUEST)}
    workdir = tempfile.mkdtemp(prefix="bench-leaks-")
    apps = [s for s in SHAPES + CLEAN if not args.apps or s.name in args.apps.split(",")]
    servers = args.servers.split(",") if args.servers else list(SERVERS)
    cases = [(spec, kind) for spec in apps for kind in servers]
    print(
        f"\nproduction: {len(cases)} runs ({args.jobs} at a time), {args.rate:g} requests/s, "
        f"30 % on the route under study at {_PER_REQUEST} bytes kept each (about "
        f"{args.rate * 0.3 * 60 * _PER_REQUEST / MB:.1f} MB/min when it leaks), default "
        f"settings (warm-up {warmup:.0f} s)"
    )

    def one(case: tuple[Any, str]) -> Outcome:
        spec, kind = case
        return run_case(
            spec,
            kind,
            workdir,
            env,
            warmup=warmup,
            rate=args.rate,
            timeout=warmup + args.after_warmup,
            stop_on_report=spec.leaks,
        )

    with ThreadPoolExecutor(args.jobs) as pool:
        outcomes = list(pool.map(one, cases))
    header = (
        f"{'app':<18} {'server':<8} {'first report':>12} {'site':>5} {'holder':>6} "
        f"{'route':>5} {'size':>7}  top site / holder"
    )
    print("\n" + header)
    for o in outcomes:
        if not o.leaks:
            continue
        first = "-" if o.first_after_warmup is None else f"{o.first_after_warmup:.0f} s"
        size = "-" if o.size_error is None else f"{o.size_error:+.0%}"
        rank = "-" if o.route_rank is None else str(o.route_rank)
        print(
            f"{o.app:<18} {o.server:<8} {first:>12} {_yes(o.site_right):>5} "
            f"{_yes(o.holder_right):>6} {rank:>5} {size:>7}  {o.site} / {o.holder[:70]}"
            + (f" [{o.error}]" if o.error else "")
        )
    leaking = [o for o in outcomes if o.leaks]
    firsts = [o.first_after_warmup for o in leaking if o.first_after_warmup is not None]
    print(
        f"\nleaking runs: {len(leaking)}; reported {len(firsts)}; first site right "
        f"{sum(o.site_right for o in leaking)}; holder right "
        f"{sum(o.holder_right for o in leaking)}; "
        f"leaking route first {sum(o.route_rank == 1 for o in leaking)}; size within 20 % "
        f"{sum(o.size_error is not None and abs(o.size_error) <= 0.2 for o in leaking)}; "
        f"within 60 s of warm-up {sum(f <= 60 for f in firsts)}"
        + (f"; median {statistics.median(firsts):.0f} s" if firsts else "")
    )
    clean = [o for o in outcomes if not o.leaks]
    print(f"clean runs: {len(clean)}; reports {sum(len(o.reports) for o in clean)} (target 0)")
    for o in clean:
        error = f" [{o.error}]" if o.error else ""
        print(f"  {o.app:<18} {o.server:<8} {len(o.reports)}{error}")
    if args.no_pair:
        return
    spec = next(s for s in SHAPES if s.name == "bytes_cache")
    pair = run_pair(spec, "sync", workdir, env, rate=args.rate, seconds=args.pair_seconds)
    g, b = pair["guarded"], pair["bare"]
    print(
        f"\np99 latency, {spec.name} under gunicorn sync, {args.rate:g} requests/s for "
        f"{args.pair_seconds:.0f} s, the same requests to both at the same moments:"
    )
    for label, t in (("without the guard", b), ("with the guard   ", g)):
        print(
            f"  {label}: p50 {t.get('p50_ms')} ms, p99 {t.get('p99_ms')} ms, "
            f"max {t.get('max_ms')} ms"
        )
    if g.get("p99_ms") and b.get("p99_ms"):
        print(f"  ratio {g['p99_ms'] / b['p99_ms']:.2f}x (target <= 1.5x)")
    print(f"  leak reports {pair['reports']}: {pair['diagnosis']}")


def attribution_cost(rounds: int = 200_000) -> None:
    """Route attribution on the request path: the WSGI middleware with and without it, and
    the ASGI one's counting of a matched route, in microseconds per request."""
    from runtime_guard.integrations.wsgi import GuardMiddleware
    from runtime_guard.leaks import routes

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return [b"ok"]

    counted = GuardMiddleware(app)
    bare = GuardMiddleware(app)
    bare._count = len  # type: ignore[method-assign]  # a C call that does nothing useful
    paths = [f"/reports/{i:x}" for i in range(1000)]
    environs = [{"PATH_INFO": p, "REQUEST_METHOD": "GET"} for p in paths]

    def run(middleware: Any) -> float:
        begun = time.perf_counter()
        for i in range(rounds):
            middleware(environs[i % 1000], None)
        return (time.perf_counter() - begun) / rounds * 1e6

    def named() -> float:
        count = routes.counts().named
        begun = time.perf_counter()
        for _ in range(rounds):
            count("/reports/{report_id}")
        return (time.perf_counter() - begun) / rounds * 1e6

    results: dict[str, list[float]] = {"bare": [], "counted": [], "named": []}
    for _ in range(7):  # interleaved, so load from other processes hits all alike
        results["bare"].append(run(bare))
        results["counted"].append(run(counted))
        results["named"].append(named())
        routes.counts().fold()
    bare_us, counted_us = min(results["bare"]), min(results["counted"])
    print(f"\nroute attribution per request (best of 7 x {rounds:,} calls):")
    print(f"  WSGI middleware, bare:                  {bare_us:.3f} us")
    print(
        f"  WSGI middleware, counting the route:    {counted_us:.3f} us "
        f"({counted_us - bare_us:+.3f} us; target < 1 us)"
    )
    print(f"  counting a named route (ASGI, Django):  {min(results['named']):.3f} us")
    routes.counts().clear()


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clean-seconds", type=float, default=200.0)
    parser.add_argument("--leak-timeout", type=float, default=260.0)
    parser.add_argument(
        "--overhead-only", action="store_true", help="skip the detection runs (minutes)"
    )
    parser.add_argument("--child", nargs=3, metavar=("KIND", "ARG", "SECONDS"))
    parser.add_argument(
        "--production", action="store_true", help="only the real-server table (about 30 min)"
    )
    parser.add_argument("--jobs", type=int, default=3, help="production runs at a time")
    parser.add_argument("--apps", default="", help="comma-separated app names (default: all)")
    parser.add_argument("--servers", default="", help="sync,gthread,uvicorn (default: all)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--after-warmup", type=float, default=150.0, help="seconds watched")
    parser.add_argument("--pair-seconds", type=float, default=170.0)
    parser.add_argument("--no-pair", action="store_true", help="skip the p99 comparison")
    parser.add_argument(
        "--attribution-only", action="store_true", help="only the route attribution cost"
    )
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
    if args.attribution_only:
        attribution_cost()
        return
    if args.production:
        attribution_cost()
        production(args, defaults)
        return
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
