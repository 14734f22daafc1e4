"""Paced load from a separate process: HTTP requests or Celery tasks at a fixed rate.

The schedule is open-loop, as ``wrk2`` paces it: call ``i`` is due at ``start + i / rate``
whatever happened to the calls before, and its latency is counted from when it was due, so a
stalled server cannot slow the load down and hide its own stall. Each call's outcome is
written as one JSON record: due time, latency, status (or the error), the pid that answered.

    python load.py http PORT RATE SECONDS OUT.json [--spike-at S]
    python load.py celery BROKER_URL RATE SECONDS OUT.json [--spike-at S]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import threading
import time
from typing import Any

TIMEOUT = 30.0
"""Seconds a call may take before it counts as failed."""


async def _http_call(port: int, path: str, due: float, start: float) -> dict[str, Any]:
    record: dict[str, Any] = {"t": round(due - start, 4), "path": path}
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        record["error"] = type(exc).__name__
        record["lat"] = round(time.monotonic() - due, 4)
        return record
    record["lat"] = round(time.monotonic() - due, 4)
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        record["error"] = "no response" if not raw else "bad response"
        return record
    record["status"] = int(parts[1])
    if body.startswith(b"{"):
        try:
            record["pid"] = json.loads(body).get("pid")
        except ValueError:
            record["error"] = "truncated body"
    return record


async def _run_http(port: int, rate: float, seconds: float, spike_at: float | None) -> list[Any]:
    start = time.monotonic() + 0.2
    tasks = []
    total = int(rate * seconds)
    spiked = spike_at is None
    for i in range(total):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        path = "/"
        if not spiked and due - start >= spike_at:
            path, spiked = "/spike", True
        tasks.append(asyncio.create_task(_http_call(port, path, due, start)))
    return list(await asyncio.gather(*tasks))


def run_http(port: int, rate: float, seconds: float, spike_at: float | None) -> list[Any]:
    """Paced GET requests to ``127.0.0.1:port``; one record per request."""
    return asyncio.run(_run_http(port, rate, seconds, spike_at))


def run_celery(broker: str, rate: float, seconds: float, spike_at: float | None) -> list[Any]:
    """Paced ``svc.work`` tasks through ``broker``; one record per task, after all are done."""
    from celery import Celery

    client = Celery("svc_load", broker=broker, backend=broker)
    sent: list[tuple[dict[str, Any], Any, float]] = []
    start = time.monotonic() + 0.2
    wall_start = time.time() + 0.2
    spiked = spike_at is None
    for i in range(int(rate * seconds)):
        due = start + i / rate
        time.sleep(max(0.0, due - time.monotonic()))
        name = "svc.work"
        if not spiked and due - start >= spike_at:
            name, spiked = "svc.spike", True
        record: dict[str, Any] = {"t": round(i / rate, 4), "path": name}
        try:
            result = client.send_task(name)
        except Exception as exc:
            record["error"] = type(exc).__name__
            sent.append((record, None, 0.0))
            continue
        sent.append((record, result, wall_start + i / rate))
    deadline = time.monotonic() + TIMEOUT
    pending = [item for item in sent if item[1] is not None]
    while pending and time.monotonic() < deadline:
        still = []
        for record, result, due_wall in pending:
            try:
                state = result.state
            except Exception:
                still.append((record, result, due_wall))
                continue
            if state in ("SUCCESS", "FAILURE"):
                _finish(record, result, state, due_wall)
            else:
                still.append((record, result, due_wall))
        pending = still
        time.sleep(0.2)
    for record, _result, _due in pending:
        record["error"] = "never finished"
    client.close()
    return [record for record, _r, _d in sent]


def _finish(record: dict[str, Any], result: Any, state: str, due_wall: float) -> None:
    done = result.date_done
    if isinstance(done, str):
        done = datetime.datetime.fromisoformat(done)
    if isinstance(done, datetime.datetime):
        if done.tzinfo is None:
            done = done.replace(tzinfo=datetime.UTC)
        record["lat"] = round(done.timestamp() - due_wall, 4)
    if state == "SUCCESS":
        record["status"] = 200
        value = result.result
        if isinstance(value, dict):
            record["pid"] = value.get("pid")
    else:
        record["error"] = type(result.result).__name__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("http", "celery"))
    parser.add_argument("target", help="port (http) or broker URL (celery)")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("out")
    parser.add_argument("--spike-at", type=float, default=None)
    args = parser.parse_args()
    if args.kind == "http":
        records = run_http(int(args.target), args.rate, args.seconds, args.spike_at)
    else:
        records = run_celery(args.target, args.rate, args.seconds, args.spike_at)
    with open(args.out, "w") as f:
        json.dump(records, f)


if __name__ == "__main__":
    threading.current_thread().name = "load"
    main()
