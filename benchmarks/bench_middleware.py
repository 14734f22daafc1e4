"""Cost of the guard's WSGI middleware on a real server under wrk, with and without, same run.

Run: ``python benchmarks/bench_middleware.py [--rounds 12] [--seconds 3]``.

Two gunicorn servers serve the Flask example app (``examples/flask_app.py``, leaks off), each
with the guard installed in its workers by the gunicorn hooks; one wraps the app in
``GuardMiddleware``, the other does not. wrk loads them in turn (A B, B A, ...) so both see
the same machine state; each round gives a ratio, and the median ratio is the cost (robust
to other work on the machine, which moves both halves of a round alike). A second figure times the
middleware's own per-request path in-process, against the bare app.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path
from wsgiref.util import setup_testing_defaults

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

WRAPPER = """
from flask_app import app as plain
from runtime_guard.integrations.wsgi import GuardMiddleware

guarded = GuardMiddleware(plain, exempt=("/admin",))
"""

CONFIG = """
from runtime_guard.integrations.gunicorn import post_fork
workers = 2
accesslog = None
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(app: str, directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "EXAMPLE_GUARD": "0",  # no middleware from the example itself: the wrapper adds it
        "EXAMPLE_LEAK": "",
        "PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(directory)]),
    }
    command = [sys.executable, "-m", "gunicorn", "-c", str(directory / "conf.py")]
    command += ["-b", f"127.0.0.1:{port}", f"wrapper:{app}"]
    proc = subprocess.Popen(
        command, cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server for {app} did not start")


def wrk(url: str, seconds: float, connections: int) -> tuple[float, float]:
    """Return (requests per second, p99 latency in ms) of one wrk run."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([0-9.]+)(us|ms|s)\b", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99


def in_process_cost(number: int = 200_000) -> tuple[float, float]:
    """Nanoseconds per call of a bare WSGI app and of the same app behind the middleware."""
    import runtime_guard
    from runtime_guard.integrations.wsgi import GuardMiddleware

    def bare(environ: dict[str, object], start_response: object) -> list[bytes]:
        return [b""]

    guarded = GuardMiddleware(bare, exempt=("/admin",))
    runtime_guard.install(interval=1.0)
    environ: dict[str, object] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = "/work"
    try:
        base = min(timeit.repeat(lambda: bare(environ, None), number=number, repeat=5))
        wrapped = min(timeit.repeat(lambda: guarded(environ, None), number=number, repeat=5))
    finally:
        runtime_guard.uninstall()
    return base / number * 1e9, wrapped / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    bare_ns, wrapped_ns = in_process_cost()
    print(
        f"in-process: bare app {bare_ns:.0f} ns/call, behind GuardMiddleware "
        f"{wrapped_ns:.0f} ns/call (+{wrapped_ns - bare_ns:.0f} ns per request)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "wrapper.py").write_text(WRAPPER)
        (directory / "conf.py").write_text(CONFIG)
        servers = {name: start(name, directory) for name in ("plain", "guarded")}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
        try:
            for _name, (_, url) in servers.items():  # warm-up: model loaded, caches hot
                wrk(url, 2, args.connections)
            for round_number in range(args.rounds):
                order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
                for name in order:
                    results[name].append(wrk(servers[name][1], args.seconds, args.connections))
                line = ", ".join(
                    f"{n} {results[n][-1][0]:.0f} req/s p99 {results[n][-1][1]:.2f} ms"
                    for n in servers
                )
                print(f"round {round_number + 1}: {line}", flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)

    rps = {n: statistics.median(r for r, _ in results[n]) for n in results}
    p99 = {n: statistics.median(p for _, p in results[n]) for n in results}
    ratios = [g[0] / p[0] for g, p in zip(results["guarded"], results["plain"], strict=True)]
    p99_ratios = [g[1] / p[1] for g, p in zip(results["guarded"], results["plain"], strict=True)]
    cost = 1 - statistics.median(ratios)
    print(
        f"median over {args.rounds} rounds of {args.seconds:.0f} s (wrk -c{args.connections}, "
        f"gunicorn 2 sync workers, Flask example app; load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores):"
    )
    print(f"  without middleware: {rps['plain']:.0f} req/s, p99 {p99['plain']:.2f} ms")
    print(f"  with middleware:    {rps['guarded']:.0f} req/s, p99 {p99['guarded']:.2f} ms")
    print(
        f"  throughput cost {cost:+.2%} (median of per-round ratios; target < 2 %), "
        f"p99 ratio {statistics.median(p99_ratios):.3f}"
    )


if __name__ == "__main__":
    main()
