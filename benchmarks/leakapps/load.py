"""Open-loop load from its own process: Poisson arrivals, a route mix, latencies per target.

``python -m leakapps.load --app NAME --rate 20 --seconds 120 --share 0.3 --out FILE URL...``

Requests arrive at ``--rate`` per second on average (exponential gaps, as independent users
make them), whatever the server's speed; each goes to one of the URLs in turn, so two
servers given together (one guarded, one not) see the same load at the same moments. A
``--share`` of them call the app's route under study with a fresh id; the rest call its
ordinary routes. Each request opens its own connection (gunicorn's sync worker closes them
anyway). SIGTERM ends the run early; the summary is written either way.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import random
import signal
import sys
import threading
import time
import urllib.parse
from typing import Any

from leakapps import ALL

_ORDINARY = ("/", "/items/{n}", "/search?q={w}")


def _get(base: urllib.parse.SplitResult, path: str) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(base.hostname, base.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return status, time.perf_counter() - started


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    urls: list[str],
    app: str,
    *,
    rate: float,
    seconds: float,
    share: float,
    seed: int = 1,
    records: str | None = None,
) -> dict[str, Any]:
    spec = ALL[app]
    rng = random.Random(seed)
    bases = [urllib.parse.urlsplit(url) for url in urls]
    jobs: queue.Queue[tuple[int, str, bool] | None] = queue.Queue()
    results: list[tuple[float, int, bool, int, float]] = []
    lock = threading.Lock()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    began = time.monotonic()
    began_wall = time.time()

    def worker() -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            target, path, studied = job
            status, latency = _get(bases[target], path)
            with lock:
                results.append((time.monotonic() - began, target, studied, status, latency))

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(24)]
    for thread in pool:
        thread.start()
    next_at = began
    n = 0
    while not stop.is_set() and time.monotonic() - began < seconds:
        studied = rng.random() < share
        if studied:
            path = spec.path(rng)
        else:
            path = rng.choice(_ORDINARY).format(n=rng.randrange(1000), w=rng.getrandbits(20))
        # Every target gets the same request at (nearly) the same moment, in a random order:
        # the first one queued would otherwise always get the CPU first.
        order = list(range(len(bases)))
        rng.shuffle(order)
        for target in order:
            jobs.put((target, path, studied))
        n += 1
        next_at += rng.expovariate(rate)
        stop.wait(max(0.0, next_at - time.monotonic()))
    for _ in pool:
        jobs.put(None)
    for thread in pool:
        thread.join(35)
    if records:
        with open(records, "w", encoding="utf-8") as f:
            json.dump({"began_wall": began_wall, "requests": results}, f)
    summary: dict[str, Any] = {"sent": n, "seconds": round(time.monotonic() - began, 2)}
    summary["targets"] = []
    for target, url in enumerate(urls):
        mine = [r for r in results if r[1] == target]
        latencies = [r[4] for r in mine if r[3] == 200]
        summary["targets"].append(
            {
                "url": url,
                "requests": len(mine),
                "errors": sum(1 for r in mine if r[3] != 200),
                "studied": sum(1 for r in mine if r[2]),
                "p50_ms": _ms(_percentile(latencies, 0.50)),
                "p99_ms": _ms(_percentile(latencies, 0.99)),
                "max_ms": _ms(max(latencies, default=None)),
            }
        )
    return summary


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--app", required=True)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="-")
    parser.add_argument("--records", help="write every request (time, target, status, latency)")
    args = parser.parse_args()
    summary = run(
        args.urls,
        args.app,
        rate=args.rate,
        seconds=args.seconds,
        share=args.share,
        seed=args.seed,
        records=args.records,
    )
    text = json.dumps(summary)
    if args.out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
