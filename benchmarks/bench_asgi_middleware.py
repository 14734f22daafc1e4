"""Cost of the guard's ASGI middleware, in process and on a real uvicorn under wrk, same run.

Run: ``python benchmarks/bench_asgi_middleware.py [--rounds 6] [--seconds 2]``.

In process: one call of a bare ASGI app against the same app behind ``GuardMiddleware``,
on the path a request takes without pressure (with and without a root path in the scope)
and on the 503 sent while shedding; each call is driven to its end without an event loop
(nothing in it waits), so the figure is the middleware's own work.

On a server: three uvicorn processes (``--http httptools``, one worker) serve the same bare
app: plain, behind the middleware, and behind the middleware with the guard critical (so
every request gets the 503). wrk loads them in turn, in alternating order, and each round
gives ratios to the plain server measured in that round; the medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench_middleware import free_port, wrk  # the same wrk run and port choice as for WSGI

APP = """
import os
import runtime_guard
from runtime_guard.integrations.asgi import GuardMiddleware


async def plain(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


mode = os.environ["BENCH_MODE"]
if mode != "plain":
    # "shed": a process budget far below the RSS keeps the guard critical from the start.
    limit = "1MB" if mode == "shed" else None
    runtime_guard.install(process_limit=limit, restart_after="off", interval=1.0)
app = plain if mode == "plain" else GuardMiddleware(plain)
"""

MODES = ("plain", "guarded", "shed")


def start(mode: str, directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "BENCH_MODE": mode}
    command = [sys.executable, "-m", "uvicorn", "bench_app:app", "--http", "httptools"]
    command += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(
        command, cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/work"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
            return proc, url
        except urllib.error.HTTPError:  # the 503 of the shed server: it answers
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"uvicorn for {mode} did not start")


def _drive(coroutine: Coroutine[Any, Any, None]) -> None:
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise RuntimeError("the benchmarked call waited for something")


def in_process_costs(number: int = 100_000) -> dict[str, float]:
    """Nanoseconds per request: the bare app, and the middleware on each path."""
    from runtime_guard.integrations.asgi import GuardMiddleware
    from runtime_guard.testing import FakeProbe, make_guard

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        return None

    probe = FakeProbe()
    guard = make_guard(probe)
    guarded = GuardMiddleware(bare, guard=guard, exempt=("/admin",))
    scope = {"type": "http", "path": "/work", "root_path": "", "headers": []}
    rooted = {**scope, "path": "/api/work", "root_path": "/api"}

    def cost(app: Callable[..., Any], request: dict[str, Any]) -> float:
        seconds = min(
            timeit.repeat(lambda: _drive(app(request, receive, send)), number=number, repeat=5)
        )
        return seconds / number * 1e9

    try:
        probe.set_fraction(0.2)
        guard.sample()
        figures = {
            "bare app": cost(bare, scope),
            "passed": cost(guarded, scope),
            "passed, root path": cost(guarded, rooted),
        }
        probe.set_fraction(0.97)
        guard.sample()
        figures["refused (503)"] = cost(guarded, scope)
    finally:
        guard.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    figures = in_process_costs()
    base = figures["bare app"]
    print("in process, ns per request (bare app is the baseline):")
    for name, ns in figures.items():
        print(f"  {name:<18} {ns:7.0f} ns  ({ns - base:+.0f} ns)")

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "bench_app.py").write_text(APP)
        servers = {mode: start(mode, directory) for mode in MODES}
        results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
        try:
            for _, url in servers.values():  # warm-up
                wrk(url, 1, args.connections)
            for round_number in range(args.rounds):
                order = list(MODES) if round_number % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    results[mode].append(wrk(servers[mode][1], args.seconds, args.connections))
                line = ", ".join(f"{m} {results[m][-1][0]:.0f} req/s" for m in MODES)
                print(f"round {round_number + 1}: {line}", flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)

    print(
        f"uvicorn --http httptools, 1 worker, wrk -t2 -c{args.connections}, median over "
        f"{args.rounds} rounds of {args.seconds:.0f} s (load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores):"
    )
    for mode in MODES:
        rps = statistics.median(r for r, _ in results[mode])
        p99 = statistics.median(p for _, p in results[mode])
        ratio = statistics.median(
            r[0] / p[0] for r, p in zip(results[mode], results["plain"], strict=True)
        )
        print(
            f"  {mode:<8} {rps:8.0f} req/s  p99 {p99:6.2f} ms  "
            f"throughput ratio to plain {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
