"""Serving through a leak in real containers: gunicorn, uvicorn and Celery under paced load.

Each test makes a memory cgroup with a hard 200 MiB limit (``tests/containers.py``), starts
a scenario app of ``benchmarks/service/`` inside it with the guard wired as its docs say,
drives paced load from this side of the cgroup, and counts what the clients got and what
the kernel's OOM killer did. The runs are short (a leak at 60 to 200 KB per call fills the
container within a minute); ``benchmarks/bench_service.py`` runs the long ones beside the
servers' own mitigations.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import containers
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks" / "service"))

import scenario as sc  # noqa: E402  (benchmarks/service/scenario.py)

MiB = 1024 * 1024


@pytest.fixture
def container() -> Iterator[containers.Container]:
    """A fresh 200 MiB memory cgroup, removed after the test."""
    try:
        found = containers.start_container(200 * MiB, "recycling")
    except containers.Unavailable as exc:
        pytest.skip(str(exc))
    yield found
    found.stop()


def _run(
    scenario: sc.Scenario, mode: str, container: containers.Container, redis: Any, tmp: Path
) -> sc.Result:
    result = sc.run(scenario, mode, container, redis.url, tmp / mode)
    print(f"\n{scenario.name} ({mode}): {result.to_dict()}")
    return result


def _served_well(result: sc.Result) -> None:
    assert result.oom_kills == 0, result.log[-3000:]
    assert result.failed == 0, result.errors
    assert result.refused <= 0.01 * result.calls


def _one_at_a_time(log: str) -> None:
    """Each recycle the guard decided ended (the worker exited) before the next was decided."""
    decided = re.compile(r"runtime_guard: recycling worker pid (\d+):")
    exited = re.compile(r"Worker exiting \(pid: (\d+)\)|Child process \[(\d+)\] died")
    open_recycle = None
    for line in log.splitlines():
        if m := decided.search(line):
            assert open_recycle is None, f"pid {m[1]} decided while {open_recycle} still ran"
            open_recycle = m[1]
        elif (m := exited.search(line)) and open_recycle in (m[1], m[2]):
            open_recycle = None


def test_the_container_harness_sees_the_kernel_kill_at_the_limit(
    container: containers.Container,
) -> None:
    """A process allocating past the cgroup's limit is killed by the kernel, and counted."""
    proc = container.popen([sys.executable, "-c", "a = [bytearray(8 << 20) for _ in range(40)]"])
    assert proc.wait(60) == -9
    assert container.oom_kills() == 1
    peak = container.peak()
    assert peak is None or peak <= container.limit


@pytest.mark.slow
def test_gunicorn_workers_recycle_one_at_a_time_before_the_oom_killer(
    container: containers.Container, redis_server: Any, tmp_path: Path
) -> None:
    """Both workers leak: recycled in turn before any OOM kill, no failures, reports name it."""
    scenario = sc.Scenario("gunicorn", "gunicorn", "cache,clients", 100.0, seconds=70.0)
    result = _run(scenario, "guard", container, redis_server, tmp_path)
    _served_well(result)
    assert result.recycles >= 2 and result.recycle_reports >= 2
    assert result.named == {"cache": True, "clients": True}
    _one_at_a_time(result.log)


@pytest.mark.slow
def test_without_the_guard_the_same_leak_is_oom_killed(
    container: containers.Container, redis_server: Any, tmp_path: Path
) -> None:
    """The comparison: the same load without the guard ends in the kernel's OOM killer."""
    scenario = sc.Scenario("gunicorn", "gunicorn", "cache,clients", 100.0, seconds=45.0)
    result = _run(scenario, "none", container, redis_server, tmp_path)
    assert result.oom_kills >= 1


@pytest.mark.slow
def test_a_flat_worker_is_never_recycled_for_its_neighbours_leak(
    container: containers.Container, redis_server: Any, tmp_path: Path
) -> None:
    """Only one gunicorn worker leaks: it is recycled, the flat one serves to the end."""
    scenario = sc.Scenario("gunicorn-one", "gunicorn", "cache", 200.0, seconds=55.0)
    result = sc.run(
        scenario, "guard", container, redis_server.url, tmp_path, env={"SVC_LEAK_WORKERS": "odd"}
    )
    _served_well(result)
    assert result.recycles >= 1
    ages = dict(re.findall(r"\[(\d+)\] \[INFO\] Booting worker with pid: (\d+)", result.log))
    assert ages, result.log[-2000:]
    recycled = set(re.findall(r"runtime_guard: recycling worker pid (\d+):", result.log))
    flat = [pid for pid in ages.values() if pid not in recycled]
    assert recycled and flat
    # The flat worker (started second, even age) answered from the start to the end.
    survivors = [p for p in result.served if str(p) in flat]
    assert any(result.served[p][1] >= scenario.seconds - 2 for p in survivors)


@pytest.mark.slow
def test_a_spike_and_a_clean_app_are_never_recycled(
    container: containers.Container, redis_server: Any, tmp_path: Path
) -> None:
    """A clean app with a one-off 50 MiB request: no recycle, no 503, the spike answered."""
    scenario = sc.Scenario("gunicorn-spike", "gunicorn", "", seconds=40.0, spike_at=15.0)
    result = _run(scenario, "guard", container, redis_server, tmp_path)
    _served_well(result)
    assert result.refused == 0 and result.recycles == 0
    assert "recycle pending" not in result.log


@pytest.mark.slow
@pytest.mark.parametrize("server", ["uvicorn", "celery"])
def test_uvicorn_and_celery_workers_recycle_before_the_oom_killer(
    server: str, container: containers.Container, redis_server: Any, tmp_path: Path
) -> None:
    """uvicorn --workers 2 and Celery prefork recycle through their own graceful paths."""
    scenario = sc.Scenario(server, server, "cache,clients", 60.0, seconds=70.0)
    result = _run(scenario, "guard", container, redis_server, tmp_path)
    _served_well(result)
    assert result.recycles >= 1 and result.recycle_reports >= 1
    assert result.named["cache"] and result.named["clients"]
