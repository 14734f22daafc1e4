"""One view per container: the shared directory, each worker's published figures, the view."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import runtime_guard
from runtime_guard import _container, container, signals
from runtime_guard._component import Component
from runtime_guard.container import ContainerPublisher, draining, file_name, read_container
from runtime_guard.integrations._recycle import attach_recycler
from runtime_guard.testing import FakeProbe, ManualClock, make_guard

WORKER = textwrap.dedent(
    """
    import os, sys, time
    import runtime_guard
    ballast = bytearray(int(sys.argv[1]) * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    guard = runtime_guard.install(interval=0.05)
    while len(guard.history) < 2:
        time.sleep(0.02)
    print("ready", os.getpid(), flush=True)
    sys.stdin.readline()
    """
)


def _start_worker(directory: Path, ballast_mb: int = 0) -> subprocess.Popen[str]:
    """A real process that installs the guard, publishes in ``directory`` and waits."""
    env = {**os.environ, "RUNTIME_GUARD_CONTAINER_DIR": str(directory)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(ballast_mb)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), line
    return proc


def _end(proc: subprocess.Popen[str]) -> None:
    try:
        proc.communicate("\n", timeout=10)
    except (subprocess.TimeoutExpired, OSError, ValueError):
        proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        _end(proc)


# -- the directory ---------------------------------------------------------------------


def test_container_dir_follows_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    """The explicit variable wins, then the Prometheus multiprocess directory; "off" is none."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    monkeypatch.delenv(_container.CONTAINER_DIR_ENV, raising=False)
    assert _container.container_dir() == str(tmp_path / "prom")
    monkeypatch.setenv(_container.CONTAINER_DIR_ENV, str(tmp_path / "mine"))
    assert _container.container_dir() == str(tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()
    monkeypatch.setenv(_container.CONTAINER_DIR_ENV, "off")
    assert _container.container_dir() is None
    assert _container.container_dir(str(tmp_path / "given")) == str(tmp_path / "given")


def test_default_dir_is_keyed_by_the_cgroup_and_private(tmp_path: Path, monkeypatch: Any) -> None:
    """Without a variable the directory is in the temporary directory, named after the
    cgroup, mode 0700; a same-named directory others may write to is refused."""
    monkeypatch.delenv(_container.CONTAINER_DIR_ENV, raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    found = _container.container_dir()
    assert found is not None
    assert Path(found).parent == tmp_path
    assert _container.container_key() in Path(found).name
    assert Path(found).stat().st_mode & 0o777 == 0o700
    os.chmod(found, 0o777)
    assert _container.container_dir() is None


def test_container_key_is_the_same_for_the_container_and_differs_across_cgroups() -> None:
    """Another process of this cgroup gets the same key; a process moved into another real
    memory cgroup gets another."""
    here = _container.container_key()
    same = subprocess.run(
        [
            sys.executable,
            "-c",
            "from runtime_guard import _container; print(_container.container_key())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert same.stdout.strip() == here
    own = _own_memory_cgroup()
    if own is None:
        pytest.skip("no writable cgroup v1 memory hierarchy here")
    child = own / f"rg-test-{uuid.uuid4().hex[:8]}"
    child.mkdir()
    try:
        moved = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import os; open({str(child / 'cgroup.procs')!r}, 'w').write(str(os.getpid()));"
                "from runtime_guard import _container; print(_container.container_key())",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        with contextlib.suppress(OSError):
            child.rmdir()
    assert moved.stdout.strip() != here


def _own_memory_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            found = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return found if os.access(found, os.W_OK) else None
    return None


def test_fixture_roots_give_different_keys() -> None:
    """Containers whose /proc/self/cgroup differ get different keys."""
    roots = Path(__file__).parent / "fixtures" / "roots"
    keys = {_container.container_key(str(roots / name)) for name in ("cgroup_v1", "cgroup_v2")}
    assert len(keys) == 2


def test_process_alive_tells_a_reused_pid_apart() -> None:
    """A running pid counts only while it is the same process (same start time)."""
    started = _container.process_started(os.getpid())
    assert started
    assert _container.process_alive(os.getpid(), started)
    assert not _container.process_alive(os.getpid(), started - 100)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not _container.process_alive(proc.pid)


def test_a_start_time_is_psutils_figure_and_a_zombie_has_none() -> None:
    """A process's start time, read from /proc, equals psutil's; an unreaped child is dead."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = _container.process_started(proc.pid)
        assert started == pytest.approx(psutil.Process(proc.pid).create_time(), abs=0.011)
    finally:
        proc.kill()
    for _ in range(200):  # the kill is delivered, not yet reaped
        if psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.01)
    assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
    assert _container.process_started(proc.pid) is None
    proc.wait()
    assert _container.process_started(proc.pid) is None


def test_a_start_time_is_read_from_the_proc_files_under_a_root(tmp_path: Path) -> None:
    """Boot time plus the clock ticks of the process's stat line; a state of Z is dead and
    a pid without a file does not run."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
    ticks = os.sysconf("SC_CLK_TCK")
    rest = " ".join(["0"] * 18)  # fields 4 to 21; the start time is field 22
    for pid, state in ((41, "S"), (42, "Z")):
        stat = f"{pid} (a (tricky) name) {state} {rest} {5 * ticks} 0 0\n"
        (tmp_path / "proc" / str(pid)).mkdir()
        (tmp_path / "proc" / str(pid) / "stat").write_text(stat)
    assert _container.process_started(41, root=str(tmp_path)) == 1_700_000_005
    assert _container.process_started(42, root=str(tmp_path)) is None
    assert _container.process_started(43, root=str(tmp_path)) is None


# -- publishing and reading ------------------------------------------------------------


def test_every_live_worker_is_in_the_view_and_a_killed_one_drops_out(
    tmp_path: Path, workers: list[subprocess.Popen[str]]
) -> None:
    """Real processes publish their own RSS; a SIGKILLed one (no exit code ran) leaves the
    view at the next read, and its file goes with ``remove_dead``."""
    small = _start_worker(tmp_path, 0)
    big = _start_worker(tmp_path, 60)
    workers += [small, big]
    view = read_container(str(tmp_path))
    by_pid = {w["pid"]: w for w in view.workers}
    assert set(by_pid) == {small.pid, big.pid}
    for proc in (small, big):
        rss = psutil.Process(proc.pid).memory_info().rss
        assert by_pid[proc.pid]["rss_bytes"] == pytest.approx(rss, rel=0.2)
        assert by_pid[proc.pid]["pressure"] == "ok"
        assert by_pid[proc.pid]["status"] == "ok"
        assert by_pid[proc.pid]["stale"] is False
    assert by_pid[big.pid]["rss_bytes"] > by_pid[small.pid]["rss_bytes"] + 40 * 2**20
    os.kill(big.pid, signal.SIGKILL)
    big.wait(10)
    assert [w["pid"] for w in read_container(str(tmp_path), remove_dead=True).workers] == [
        small.pid
    ]
    assert not (tmp_path / file_name(big.pid)).exists()


def test_a_worker_that_exits_removes_its_file(
    tmp_path: Path, workers: list[subprocess.Popen[str]]
) -> None:
    """A worker ending normally leaves no file behind."""
    proc = _start_worker(tmp_path)
    assert (tmp_path / file_name(proc.pid)).exists()
    _end(proc)
    assert proc.returncode == 0
    assert not (tmp_path / file_name(proc.pid)).exists()


def test_uninstall_leaves_the_view(tmp_path: Path, monkeypatch: Any) -> None:
    """The process-wide guard publishes after a sample; uninstall removes its file."""
    monkeypatch.setenv(_container.CONTAINER_DIR_ENV, str(tmp_path))
    guard = runtime_guard.install(interval=3600)
    guard.sample()
    assert [w["pid"] for w in read_container(str(tmp_path)).workers] == [os.getpid()]
    runtime_guard.uninstall()
    assert read_container(str(tmp_path)).workers == []
    assert list(tmp_path.iterdir()) == []


def test_a_guard_that_is_not_the_process_wide_one_publishes_nothing(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A guard made for a test in a server's process stays out of the view."""
    monkeypatch.setenv(_container.CONTAINER_DIR_ENV, str(tmp_path))
    guard = make_guard(FakeProbe())
    try:
        guard.sample()
        assert list(tmp_path.iterdir()) == []
    finally:
        guard.stop()


def _publisher_guard(tmp_path: Path, probe: FakeProbe, clock: ManualClock) -> Any:
    guard = make_guard(probe, clock)
    guard.add_component(ContainerPublisher(str(tmp_path), process_wide=False, slow_refresh=10))
    return guard


def test_figures_follow_every_sample_and_health_every_few_seconds(tmp_path: Path) -> None:
    """Pressure and usage are published with every sample; a shed feature (health) at the
    next level change or refresh, never later than ``slow_refresh``."""
    probe, clock = FakeProbe(), ManualClock()
    guard = _publisher_guard(tmp_path, probe, clock)
    try:
        probe.set_fraction(0.1)
        guard.sample()
        [mine] = read_container(str(tmp_path)).workers
        assert (mine["pressure"], mine["usage_bytes"]) == ("ok", probe.usage)
        runtime_guard.shedding.feature("container-test-feature", shed_at="high")
        probe.set_fraction(0.9)
        guard.sample()
        [mine] = read_container(str(tmp_path)).workers
        assert mine["pressure"] == "high"
        assert mine["shed_features"] == ["container-test-feature"]
        assert mine["status"] == "degraded"
        probe.set_fraction(0.91)
        clock.now += 1
        guard.sample()
        assert read_container(str(tmp_path)).workers[0]["usage_bytes"] == probe.usage
    finally:
        guard.stop()


def test_draining_is_published_with_the_next_sample(tmp_path: Path) -> None:
    """A recycle scheduled (the recycler's state, through the draining seam) is in the view
    at the next sample, not only at the next health refresh."""
    probe, clock = FakeProbe(), ManualClock()
    guard = _publisher_guard(tmp_path, probe, clock)
    try:
        attach_recycler(guard, lambda reason: None, "test", min_lifetime=3600, jitter=0)
        guard.sample()
        assert draining(guard) is None
        assert read_container(str(tmp_path)).workers[0]["draining"] is None
        guard.send(signals.restart_requested, reason="asked by the test")
        guard.flush_signals()
        assert draining(guard) == "asked by the test"
        clock.now += 1
        guard.sample()
        assert read_container(str(tmp_path)).workers[0]["draining"] == "asked by the test"
    finally:
        guard.stop()


def test_draining_seam_prefers_a_draining_attribute() -> None:
    """A recycling component that says ``draining`` is read through it, not ``reason``."""
    guard = make_guard(FakeProbe())

    class Planned(Component):
        name = container.RECYCLER
        reason = "planned for later"
        draining: str | None = None

    try:
        planned = Planned()
        guard.add_component(planned)
        assert draining(guard) is None
        planned.draining = "drain budget started"
        assert draining(guard) == "drain budget started"
    finally:
        guard.stop()


def test_stale_and_foreign_files_are_handled(tmp_path: Path) -> None:
    """A worker whose figures are old is marked stale; garbage or a pid that is not the
    publisher's process is left out; nothing raises."""
    probe, clock = FakeProbe(), ManualClock()
    guard = _publisher_guard(tmp_path, probe, clock)
    try:
        guard.sample()
        later = time.time() + 3600
        assert read_container(str(tmp_path), now=later).workers[0]["stale"] is True
        (tmp_path / file_name(1)).write_bytes(os.urandom(4096))
        (tmp_path / file_name(os.getppid())).write_bytes(b"RGW1" + b"\0" * 10)
        (tmp_path / "notes.txt").write_text("x")
        assert [w["pid"] for w in read_container(str(tmp_path)).workers] == [os.getpid()]
    finally:
        guard.stop()


def test_an_unusable_directory_switches_publishing_off_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A path that is a file: logged once, the guard samples on, nothing raises."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    guard = make_guard(FakeProbe())
    guard.add_component(ContainerPublisher(str(blocker), process_wide=False))
    try:
        with caplog.at_level(logging.WARNING, logger="runtime_guard"):
            for _ in range(3):
                guard.sample()
        assert len([r for r in caplog.records if "container directory" in r.getMessage()]) == 1
        assert guard.component("container") is not None
    finally:
        guard.stop()


def test_a_forked_child_publishes_under_its_own_pid(tmp_path: Path) -> None:
    """After fork() the child publishes its own file; the parent's stays the parent's."""
    script = textwrap.dedent(
        """
        import json, os, sys, time
        import runtime_guard
        from runtime_guard.container import read_container
        guard = runtime_guard.install(interval=0.05)
        while len(guard.history) < 2:
            time.sleep(0.02)
        pid = os.fork()
        if pid == 0:
            while len(runtime_guard.get_guard().history) < 2:
                time.sleep(0.02)
            time.sleep(0.2)
            seen = [w["pid"] for w in read_container(sys.argv[1]).workers]
            print(json.dumps({"child": os.getpid(), "seen": seen}), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print(json.dumps({"parent": os.getpid()}), flush=True)
        """
    )
    env = {**os.environ, "RUNTIME_GUARD_CONTAINER_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    child = next(line for line in lines if "child" in line)
    parent = next(line for line in lines if "parent" in line)
    assert sorted(child["seen"]) == sorted([child["child"], parent["parent"]])


def test_a_sample_racing_the_exit_removal_neither_raises_nor_publishes_again(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The file's removal at exit, on another thread while a sample publishes, waits for
    the sample; the sample neither writes to an unmapped page nor makes the file again."""
    probe, clock = FakeProbe(), ManualClock()
    guard = make_guard(probe, clock)
    publisher = ContainerPublisher(str(tmp_path), process_wide=False, slow_refresh=0)
    try:
        publisher.on_sample(guard, guard.sample())
        assert list(tmp_path.iterdir())
        health = container.worker_health
        removal = threading.Thread(target=publisher.remove)

        def health_then_exit(g: Any) -> dict[str, Any]:
            # The exit's removal starts while the sample is between its writes.
            removal.start()
            removal.join(timeout=1.0)
            return health(g)

        monkeypatch.setattr(container, "worker_health", health_then_exit)
        clock.now += 1
        publisher.on_sample(guard, guard.sample())
        removal.join()
        clock.now += 1
        publisher.on_sample(guard, guard.sample())
        assert list(tmp_path.iterdir()) == []
    finally:
        guard.stop()
