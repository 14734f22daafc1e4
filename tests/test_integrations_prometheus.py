"""Prometheus metrics: figures in one process, and per worker under gunicorn's multiprocess mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import servers
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import runtime_guard
from runtime_guard import shedding, signals
from runtime_guard.integrations import prometheus
from runtime_guard.integrations.wsgi import GuardMiddleware
from runtime_guard.recycling import Prediction, RecyclePolicy
from runtime_guard.testing import FakeProbe, make_guard

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def scrape(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict[str, Any], name: str) -> float:
    [(_, number)] = found[name]
    return float(number)


def test_collector_exports_a_pending_recycle_and_the_time_to_the_limit() -> None:
    """recycle_pending and seconds_to_limit follow the recycling policy; +Inf with no trend."""
    guard = make_guard(FakeProbe(limit=1000 * 2**20))
    try:
        registry = CollectorRegistry()
        registry.register(prometheus.GuardCollector(guard))
        guard.sample()
        found = scrape(generate_latest(registry).decode())
        assert value(found, "runtime_guard_recycle_pending") == 0
        assert value(found, "runtime_guard_seconds_to_limit") == float("inf")
        policy = guard.component("recycling")
        assert isinstance(policy, RecyclePolicy)
        policy.state, policy.reason = "pending", "usage grows"
        policy.prediction = Prediction(42.0, 30.0, 1.0, "container")
        found = scrape(generate_latest(registry).decode())
        assert value(found, "runtime_guard_recycle_pending") == 1
        assert value(found, "runtime_guard_seconds_to_limit") == 42.0
    finally:
        guard.stop()


def test_collector_exports_the_guards_figures() -> None:
    """Usage, limit, pressure, shed features and GC figures match the guard's own sample."""
    probe = FakeProbe(limit=1000 * 2**20)
    guard = make_guard(probe)
    try:
        shedding.feature("metrics-test-feature", shed_at="high")
        probe.set_fraction(0.9)
        sample = guard.sample()
        registry = CollectorRegistry()
        registry.register(prometheus.GuardCollector(guard))
        found = scrape(generate_latest(registry).decode())
        assert value(found, "runtime_guard_memory_usage_bytes") == sample.usage
        assert value(found, "runtime_guard_memory_limit_bytes") == probe.limit
        assert value(found, "runtime_guard_memory_usage_ratio") == pytest.approx(0.9)
        assert value(found, "runtime_guard_pressure_level") == 2
        shed = {labels["feature"] for labels, _ in found["runtime_guard_feature_shed"]}
        assert "metrics-test-feature" in shed
        assert value(found, "runtime_guard_gc_collections_total") == sample.gc_collections
        assert "runtime_guard_leak_rate_bytes_per_second" in found
        assert "runtime_guard_relief_total" in found
    finally:
        guard.stop()


def test_growth_rate_is_robust_to_a_spike() -> None:
    """Steady growth gives its rate; a one-off spike of 50 MB does not move it."""
    points = [(float(t), 1e9 + t * 1000.0 + (50e6 if t == 60 else 0.0)) for t in range(300)]
    assert prometheus.growth_rate(points) == pytest.approx(1000, rel=0.02)
    flat = [(float(t), 1e9 + (50e6 if t % 37 == 0 else 0.0)) for t in range(300)]
    assert prometheus.growth_rate(flat) == pytest.approx(0, abs=1)


def test_relief_runs_are_counted() -> None:
    """Each relief run (gc_forced) adds one to runtime_guard_relief_total."""
    rss = runtime_guard.probes.RssReader().read()
    guard = runtime_guard.install(memory_limit=rss * 20, interval=60)
    registry = CollectorRegistry()
    prometheus.install_metrics(registry)

    def relief_total() -> float:
        return value(scrape(generate_latest(registry).decode()), "runtime_guard_relief_total")

    before = relief_total()
    guard.relieve()
    guard.flush_signals()
    assert relief_total() == before + 1


def test_a_recycle_due_in_the_container_counts_only_for_the_worker_that_goes() -> None:
    """recycle_pending, which every worker of the container sends, adds no recycle; the
    recycle itself (restart_requested) adds one."""
    rss = runtime_guard.probes.RssReader().read()
    guard = runtime_guard.install(memory_limit=rss * 20, interval=60)
    registry = CollectorRegistry()
    prometheus.install_metrics(registry)

    def recycles() -> float:
        found = scrape(generate_latest(registry).decode())
        # No series before the first recycle of this process (the counter has labels).
        name = "runtime_guard_recycles_total"
        return value(found, name) if name in found else 0.0

    before = recycles()
    guard.send(signals.recycle_pending, reason="usage grows", seconds_to_limit=20.0)
    guard.flush_signals()
    assert recycles() == before
    guard.send(signals.restart_requested, reason="usage grows")
    guard.flush_signals()
    assert recycles() == before + 1


def test_metrics_route_on_the_middleware() -> None:
    """``metrics_path`` serves the text format with the guard's metrics."""
    rss = runtime_guard.probes.RssReader().read()
    runtime_guard.install(memory_limit=rss * 20, interval=60)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    client = httpx.Client(
        transport=httpx.WSGITransport(app=GuardMiddleware(app, metrics_path="/metrics")),
        base_url="http://test",
    )
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert value(scrape(response.text), "runtime_guard_memory_limit_bytes") == rss * 20


def test_gunicorn_multiprocess_mode_reports_every_worker(tmp_path: Path) -> None:
    """Under gunicorn with PROMETHEUS_MULTIPROC_DIR, a scrape on any worker shows all workers."""
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    port = servers.free_port()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "EXAMPLE_BIND": f"127.0.0.1:{port}",
        "EXAMPLE_WORKERS": "2",
        "EXAMPLE_LEAK": "",
        "RUNTIME_GUARD_INTERVAL": "0.2",
    }
    command = [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLES / "gunicorn.conf.py")]
    proc = subprocess.Popen(
        [*command, "flask_app:app"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        pids: set[str] = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None
            try:
                found = scrape(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
                # A worker's gauges read 0 until its first sample is written.
                rss = found["runtime_guard_memory_rss_bytes"]
                pids = {labels["pid"] for labels, v in rss if v > 10 * 2**20}
            except (httpx.TransportError, KeyError):
                pass
            time.sleep(0.2)
        assert len(pids) == 2, "both workers' figures are in one scrape"
        levels = found["runtime_guard_pressure_level"]
        assert {labels["pid"] for labels, _ in levels} == pids
    finally:
        proc.terminate()
        proc.wait(30)


# A pre-fork server in miniature: the parent installs the guard and its metrics, forks three
# workers the way gunicorn does (a worker leaves by SystemExit up the parent's stack, so
# exit hooks run), each writes its own figures, then leaves as HOW says; the parent reports
# what a scrape on it exports, and which live-gauge files were left before that scrape.
# The workers wait to leave until all have written.
PREFORK = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    import psutil
    import runtime_guard
    from runtime_guard import signals
    from runtime_guard.integrations import prometheus
    from runtime_guard.integrations._recycle import attach_recycler

    how = sys.argv[1]
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    guard = runtime_guard.install(interval=0.05)
    prometheus.install_metrics()

    def written(pid):
        return os.path.exists(os.path.join(directory, f"gauge_liveall_{pid}.db"))

    def wait_for(check):
        deadline = time.monotonic() + 20
        while not check() and time.monotonic() < deadline:
            time.sleep(0.02)
        return check()

    go = os.path.join(os.path.dirname(directory), "go")

    def work():
        assert wait_for(lambda: os.path.exists(go))  # every worker has written its figures
        if how == "kill":  # the OOM killer: no exit code runs
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "recycle":  # the guard recycles it; its stop ends the serving loop
            stopped = threading.Event()
            attach_recycler(guard, lambda reason: stopped.set(), "test", min_lifetime=0, jitter=0)
            guard.send(signals.restart_requested, reason="asked by the test")
            assert stopped.wait(20)
        sys.exit(0)

    workers = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            work()
        workers.append(pid)
    assert wait_for(lambda: all(written(pid) for pid in workers))
    open(go, "w").close()
    if how == "kill":
        zombie = psutil.STATUS_ZOMBIE
        assert wait_for(lambda: all(psutil.Process(p).status() == zombie for p in workers))
    else:
        for pid in workers:
            os.waitpid(pid, 0)
    left = sorted(n for n in os.listdir(directory) if n.startswith("gauge_live"))
    scraped = prometheus.render()[1].decode()  # killed workers are zombies, not reaped yet
    swept = sorted(n for n in os.listdir(directory) if n.startswith("gauge_live"))
    print(json.dumps({"parent": os.getpid(), "left": left, "swept": swept, "scrape": scraped}))
    """
)


def _prefork(tmp_path: Path, how: str) -> dict[str, Any]:
    directory = tmp_path / "prom"
    directory.mkdir()
    script = tmp_path / "prefork.py"
    script.write_text(PREFORK)
    done = subprocess.run(
        [sys.executable, str(script), how],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout.decode().splitlines()[-1])
    found = scrape(result["scrape"])
    result["exported"] = {labels["pid"] for labels, _ in found["runtime_guard_memory_rss_bytes"]}
    result["after"] = sorted(p.name for p in directory.iterdir() if p.name.startswith("gauge_"))
    assert result["after"] == []  # the parent's own, at its exit
    return result


@pytest.mark.parametrize("how", ["exit", "recycle"])
def test_exited_workers_leave_the_multiprocess_scrape(tmp_path: Path, how: str) -> None:
    """Forked workers that exit (or that the guard recycles) take their gauges with them."""
    result = _prefork(tmp_path, how)
    parent = str(result["parent"])
    assert result["left"] == [f"gauge_liveall_{parent}.db"]  # gone before any scrape
    assert result["exported"] == {parent}


def test_a_scrape_drops_workers_killed_without_exit_code(tmp_path: Path) -> None:
    """Workers killed by SIGKILL (as the OOM killer does) leave the next scrape on a survivor."""
    result = _prefork(tmp_path, "kill")
    parent = str(result["parent"])
    assert len(result["left"]) == 4  # nothing of theirs ran: their files stayed
    assert result["exported"] == {parent}
    assert result["swept"] == [f"gauge_liveall_{parent}.db"]


def test_mark_dead_removes_only_that_workers_live_gauges(tmp_path: Path) -> None:
    """mark_dead(pid) removes that pid's live-gauge files; counters and other pids stay."""
    for name in ("gauge_liveall_11.db", "gauge_livesum_11.db", "gauge_liveall_12.db"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "counter_11.db").write_bytes(b"")
    assert prometheus.mark_dead(11, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_11.db", "gauge_liveall_12.db"]
    assert not prometheus.mark_dead(11)  # no multiprocess directory: nothing to do


def test_sweep_keeps_running_processes(tmp_path: Path) -> None:
    """The scrape-time sweep marks dead only pids that no longer run."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for pid in (os.getpid(), gone.pid):
        (tmp_path / f"gauge_liveall_{pid}.db").write_bytes(b"")
    assert prometheus.sweep_dead(str(tmp_path)) == [gone.pid]
    assert [p.name for p in tmp_path.iterdir()] == [f"gauge_liveall_{os.getpid()}.db"]


def test_a_scrape_while_a_worker_creates_its_file_reads_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that has just started has created its file and not yet sized it: the scrape
    leaves that file out instead of failing on it."""
    from prometheus_client import generate_latest
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    written = MmapedDict(str(tmp_path / "counter_11.db"))  # type: ignore[no-untyped-call]
    key = mmap_key("runtime_guard_demo", "runtime_guard_demo_total", [], [], "A count.")
    written.write_value(key, 3.0, 0.0)  # type: ignore[no-untyped-call]
    written.close()  # type: ignore[no-untyped-call]
    (tmp_path / "counter_12.db").write_bytes(b"")  # the starting worker's
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    body = generate_latest(prometheus.scrape_registry()).decode()
    assert "runtime_guard_demo_total 3.0" in body
