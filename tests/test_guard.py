"""The guard on the real process: readings, pressure signals, threads, fork, install cycles."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import runtime_guard
from runtime_guard import Guard, Pressure, signals
from runtime_guard._component import Component
from runtime_guard.config import Config
from runtime_guard.probes import RssReader
from runtime_guard.testing import FakeProbe, make_guard

MB = 10**6
PAGE = os.sysconf("SC_PAGE_SIZE")


def touched(size: int) -> bytearray:
    block = bytearray(size)
    for i in range(0, size, PAGE):
        block[i] = 1
    return block


class Recorder:
    """Keeps what a signal delivered; connected strongly, disconnected by the test."""

    def __init__(self, signal: Any) -> None:
        self.signal = signal
        self.calls: list[dict[str, Any]] = []
        signal.connect(self)

    def __call__(self, sender: Any, **payload: Any) -> None:
        self.calls.append(payload)

    def close(self) -> None:
        self.signal.disconnect(self)


@pytest.fixture
def pressure_changes() -> Any:
    recorder = Recorder(signals.pressure_changed)
    yield recorder
    recorder.close()


def test_real_pressure_rises_in_order_and_falls_with_hysteresis(pressure_changes: Recorder) -> None:
    """Allocating past each threshold of a limit set from measured RSS signals every level in
    order, and freeing step by step lowers it only once usage is the margin below."""
    gc.collect()
    baseline = RssReader().read()
    limit = 2 * baseline + 300 * MB
    guard = Guard(Config.from_options({"memory_limit": limit}, environ={}))
    guard.start()  # the dispatcher delivers; the sampler's own samples only add readings
    blocks: list[bytearray] = []
    try:
        while guard.sample().pressure < Pressure.CRITICAL:
            assert len(blocks) < 200, "never reached CRITICAL"
            blocks.append(touched(10 * MB))
        while blocks:
            blocks.pop()
            guard.sample()
        guard.sample()
        assert guard.flush_signals()
    finally:
        guard.stop()
    ups = [(c["old"], c["new"]) for c in pressure_changes.calls if c["new"] > c["old"]]
    assert ups == [
        (Pressure.OK, Pressure.ELEVATED),
        (Pressure.ELEVATED, Pressure.HIGH),
        (Pressure.HIGH, Pressure.CRITICAL),
    ]
    downs = [c for c in pressure_changes.calls if c["new"] < c["old"]]
    assert downs, "never came back down"
    assert downs[-1]["new"] == Pressure.OK
    thresholds = {Pressure.ELEVATED: 0.70, Pressure.HIGH: 0.85, Pressure.CRITICAL: 0.95}
    for change in downs:
        assert change["sample"].usage_fraction < thresholds[change["old"]] - 0.05


def test_installed_sampler_samples_and_signals_on_its_own() -> None:
    """After install() the daemon thread takes samples at the interval and sends them."""
    taken = Recorder(signals.sample_taken)
    try:
        guard = runtime_guard.install(interval=0.02)
        deadline = time.monotonic() + 10
        while len(taken.calls) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        taken.close()
    assert len(taken.calls) >= 5
    assert len(guard.history) >= 5
    sample = taken.calls[-1]["sample"]
    assert sample.rss > 0 and sample.limit > 0 and sample.heap_blocks > 0


def test_install_is_idempotent_and_get_guard_returns_it() -> None:
    """A second install() returns the same guard; uninstall() clears get_guard()."""
    assert runtime_guard.get_guard() is None
    first = runtime_guard.install(interval=0.5)
    assert runtime_guard.install() is first
    assert runtime_guard.get_guard() is first
    runtime_guard.uninstall()
    assert runtime_guard.get_guard() is None
    runtime_guard.uninstall()  # nothing installed: still fine


def test_install_rejects_bad_options_before_starting_anything() -> None:
    """A bad option raises ConfigError at install() and leaves no guard or thread behind."""
    threads = threading.active_count()
    with pytest.raises(runtime_guard.ConfigError, match="memory_limit='lots'"):
        runtime_guard.install(memory_limit="lots")
    assert runtime_guard.get_guard() is None
    assert threading.active_count() == threads


def test_install_uninstall_cycles_leave_no_threads_or_callbacks() -> None:
    """Fifty install/uninstall cycles leave threads, gc.callbacks and receivers as they were."""
    # Weak receivers that earlier tests left in reference cycles go with the next
    # collection: collected before the baseline and after the cycles, they count neither way.
    gc.collect()
    threads = {t.name for t in threading.enumerate()}
    callbacks = list(gc.callbacks)
    receivers = {name: len(s.receivers) for name, s in signals.namespace.items()}
    for _ in range(50):
        guard = runtime_guard.install(interval=0.01)
        guard.sample()
        runtime_guard.uninstall()
    time.sleep(0.05)
    gc.collect()
    assert {t.name for t in threading.enumerate()} == threads
    assert gc.callbacks == callbacks
    assert {name: len(s.receivers) for name, s in signals.namespace.items()} == receivers


def test_raising_receiver_is_isolated_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A receiver that raises never reaches the caller, others still run, and it is logged once."""
    seen: list[int] = []

    def bad(sender: Any, **payload: Any) -> None:
        raise RuntimeError("receiver bug")

    def good(sender: Any, **payload: Any) -> None:
        seen.append(1)

    signals.sample_taken.connect(bad)
    signals.sample_taken.connect(good)
    guard = make_guard(FakeProbe())
    try:
        with caplog.at_level(logging.ERROR, logger="runtime_guard"):
            for _ in range(5):
                guard.sample()
            assert guard.flush_signals()
    finally:
        signals.sample_taken.disconnect(bad)
        signals.sample_taken.disconnect(good)
        guard.stop()
    assert len(seen) == 5
    assert len([r for r in caplog.records if "receiver bug" in (r.exc_text or "")]) == 1


def test_receiver_connecting_another_while_called() -> None:
    """A receiver connecting another during delivery breaks nothing; the new one runs later."""
    late: list[int] = []

    def late_receiver(sender: Any, **payload: Any) -> None:
        late.append(1)

    def connecting(sender: Any, **payload: Any) -> None:
        signals.sample_taken.connect(late_receiver)

    signals.sample_taken.connect(connecting)
    guard = make_guard(FakeProbe())
    try:
        guard.sample()
        guard.sample()
        assert guard.flush_signals()
    finally:
        signals.sample_taken.disconnect(connecting)
        signals.sample_taken.disconnect(late_receiver)
        guard.stop()
    assert late  # connected during the first delivery, called in the second


def test_receiver_uninstalling_from_inside_a_signal() -> None:
    """A receiver may call uninstall() on the dispatcher thread without a deadlock."""
    done = threading.Event()

    def uninstalling(sender: Any, **payload: Any) -> None:
        runtime_guard.uninstall()
        done.set()

    signals.sample_taken.connect(uninstalling)
    try:
        runtime_guard.install(interval=0.02)
        assert done.wait(10)
    finally:
        signals.sample_taken.disconnect(uninstalling)
    assert runtime_guard.get_guard() is None


def test_slow_receiver_does_not_delay_sampling() -> None:
    """A receiver blocking for a second delays only signals: samples keep their interval."""
    release = threading.Event()

    def slow(sender: Any, **payload: Any) -> None:
        release.wait(1.0)

    signals.sample_taken.connect(slow)
    try:
        guard = runtime_guard.install(interval=0.02)
        time.sleep(0.5)
        assert len(guard.history) >= 8
    finally:
        release.set()
        signals.sample_taken.disconnect(slow)


def test_32_threads_sampling_at_once() -> None:
    """Thirty-two threads calling sample() together each get a sample, and history has all."""
    guard = Guard(Config.from_options({}, environ={}))
    errors: list[BaseException] = []
    barrier = threading.Barrier(32)

    def worker() -> None:
        try:
            barrier.wait()
            for _ in range(10):
                guard.sample()
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    guard.stop()
    assert errors == []
    assert len(guard.history) == 320


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_child_gets_its_own_sampler_and_fresh_history() -> None:
    """After fork() the child samples on its own new thread with a fresh history; the parent
    keeps its own."""
    guard = runtime_guard.install(interval=0.02)
    time.sleep(0.2)
    parent_samples = len(guard.history)
    assert parent_samples > 0
    read_end, write_end = os.pipe()
    forked_at = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe and leave without running pytest's atexit
        try:
            time.sleep(0.3)
            fresh = all(s.monotonic >= forked_at for s in guard.history)
            alive = guard._thread is not None and guard._thread.is_alive()
            report = {
                "fresh": fresh,
                "alive": alive,
                "samples": len(guard.history),
                "pid_ok": True,
            }
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = json.loads(os.read(read_end, 4096))
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report["fresh"] and report["alive"] and report["samples"] >= 3
    assert len(guard.history) >= parent_samples
    assert guard._thread is not None and guard._thread.is_alive()


def test_health_is_json_ready_with_sources_and_later_keys() -> None:
    """health() is JSON-serialisable and names status, figures, sources and feature keys."""
    guard = runtime_guard.install(interval=0.5)
    health = guard.health()
    json.dumps(health)
    assert health["status"] == "ok"
    assert health["pressure"] == "ok"
    assert health["limit_bytes"] > health["usage_bytes"] > 0
    assert set(health["sources"]) >= {"rss", "usage", "limit"}
    for key in ("shed_features", "suspected_leaks", "unreleased_objects", "uptime_seconds", "gc"):
        assert key in health


@pytest.mark.parametrize(
    ("fraction", "status"), [(0.1, "ok"), (0.75, "ok"), (0.9, "degraded"), (0.97, "critical")]
)
def test_health_status_follows_pressure(fraction: float, status: str) -> None:
    """Status is ok below HIGH, degraded at HIGH and critical at CRITICAL."""
    probe = FakeProbe()
    probe.set_fraction(fraction)
    guard = Guard(Config.from_options({}, environ={}), probe=probe)
    guard.sample()
    assert guard.health()["status"] == status
    guard.stop()


def test_nothing_is_printed(capfd: pytest.CaptureFixture[str]) -> None:
    """The guard logs through logging only; it never writes to stdout or stderr itself."""
    guard = runtime_guard.install(interval=0.01)
    time.sleep(0.1)
    guard.health()
    runtime_guard.uninstall()
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_auto_import_installs_from_environment() -> None:
    """`import runtime_guard.auto` installs a guard configured from RUNTIME_GUARD_* only."""
    result = run_python(
        "import runtime_guard.auto, runtime_guard as rg;"
        "g = rg.get_guard(); print(g.config.interval, g.limit)",
        RUNTIME_GUARD_INTERVAL="0.25",
        RUNTIME_GUARD_MEMORY_LIMIT="1GiB",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.25", str(2**30)]


def test_auto_import_with_bad_variable_names_it() -> None:
    """A bad variable fails the import with a ConfigError naming the variable."""
    result = run_python("import runtime_guard.auto", RUNTIME_GUARD_HIGH="1.7")
    assert result.returncode != 0
    assert "ConfigError: RUNTIME_GUARD_HIGH='1.7'" in result.stderr


@pytest.mark.parametrize("run", range(5))
def test_sampler_never_blocks_interpreter_exit(run: int) -> None:
    """A process exiting with its sampler mid-sample exits at once and cleanly."""
    result = run_python(
        "import runtime_guard, time; runtime_guard.install(interval=0.0001);"
        f"time.sleep(0.{run + 1})"
    )
    assert result.returncode == 0
    assert result.stderr == ""


def test_receiver_calling_sample_inside_sample_taken_does_not_feed_itself() -> None:
    """sample() from a sample_taken receiver records a sample but sends no new sample_taken."""
    calls: list[int] = []

    def resampling(sender: Guard, **payload: Any) -> None:
        calls.append(1)
        sender.sample()

    guard = make_guard(FakeProbe())
    signals.sample_taken.connect(resampling)
    try:
        guard.sample()
        assert guard.flush_signals()
        time.sleep(0.1)
        assert guard.flush_signals()
    finally:
        signals.sample_taken.disconnect(resampling)
        guard.stop()
    assert calls == [1]
    assert len(guard.history) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_while_the_guard_holds_its_locks() -> None:
    """A fork taken while the guard's locks are held gives a child that can still sample."""
    guard = runtime_guard.install(interval=0.05)
    with guard._lock, guard._dispatcher._cond:
        pid = os.fork()
        if pid == 0:
            try:
                guard.sample()
                ok = guard.flush_signals(2)
                os._exit(0 if ok and len(guard.history) >= 1 else 3)
            except BaseException:
                os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_install_uninstall_racing_with_sampling() -> None:
    """Threads installing, uninstalling and sampling at once raise nothing and end clean."""
    errors: list[BaseException] = []
    stop = time.monotonic() + 1.5

    def churn() -> None:
        try:
            while time.monotonic() < stop:
                runtime_guard.install(interval=0.001)
                runtime_guard.uninstall()
        except BaseException as exc:
            errors.append(exc)

    def sampler() -> None:
        try:
            while time.monotonic() < stop:
                guard = runtime_guard.get_guard()
                if guard is not None:
                    guard.sample()
                    guard.health()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (churn, churn, sampler, sampler)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runtime_guard.uninstall()
    assert errors == []
    assert not [t for t in threading.enumerate() if t.name.startswith("runtime-guard")]


def test_statm_vanishing_mid_run_falls_back_to_psutil(caplog: pytest.LogCaptureFixture) -> None:
    """If /proc/self/statm stops answering, RSS comes from psutil and the switch is logged once."""
    guard = Guard(Config.from_options({}, environ={}))
    reader = guard._probe.rss  # type: ignore[attr-defined]
    assert reader.source == "/proc/self/statm"
    os.close(reader._statm._fd)  # the held file is gone under the guard
    with caplog.at_level(logging.WARNING, logger="runtime_guard"):
        first = guard.sample()
        second = guard.sample()
    guard.stop()
    assert reader.source == "psutil"
    assert first.rss > 0 and second.rss > 0
    assert len([r for r in caplog.records if "falling back to psutil" in r.getMessage()]) == 1


class BrokenProbe(FakeProbe):
    """A probe whose every read fails, like a host where nothing can be read."""

    def read(self) -> Any:
        raise OSError("no RSS source")


def test_unreadable_memory_never_reaches_health_or_the_sampler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With no readable source, health() says unknown and the sampler logs once and goes on."""
    guard = Guard(Config.from_options({"interval": 0.01}, environ={}), probe=BrokenProbe())
    assert guard.health()["status"] == "unknown"
    with caplog.at_level(logging.ERROR, logger="runtime_guard"):
        guard.start()
        time.sleep(0.2)
        guard.stop()
    assert len([r for r in caplog.records if "sample failed" in r.getMessage()]) == 1
    assert len(guard.history) == 0


def test_host_clearing_gc_callbacks_is_repaired() -> None:
    """If the host empties gc.callbacks, the sampler puts its GC timer back."""
    guard = runtime_guard.install(interval=0.01)
    gc.callbacks.clear()
    deadline = time.monotonic() + 5
    while not gc.callbacks and time.monotonic() < deadline:
        time.sleep(0.01)
    before = guard._gc.collections
    gc.collect()
    assert guard._gc.collections == before + 1


class JumpingClock:
    """The guard's clock: real monotonic time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def _samples_within(probe: FakeProbe, count: int, timeout: float = 10.0) -> bool:
    target = probe.reads + count
    deadline = time.monotonic() + timeout
    while probe.reads < target and time.monotonic() < deadline:
        time.sleep(0.01)
    return probe.reads >= target


def test_clock_jumping_an_hour_either_way_neither_bursts_nor_stalls_the_sampler() -> None:
    """A monotonic clock that jumps forward an hour causes no catch-up burst, and one that
    jumps back an hour does not stall sampling for that hour."""
    clock = JumpingClock()
    probe = FakeProbe()
    guard = Guard(Config.from_options({"interval": 0.05}, environ={}), probe=probe, clock=clock)
    guard.start()
    try:
        assert _samples_within(probe, 3)
        clock.offset += 3600.0
        before = probe.reads
        time.sleep(0.5)
        # An hour of 50 ms intervals caught up would be 72,000 samples.
        assert probe.reads - before < 40
        clock.offset -= 7200.0
        assert _samples_within(probe, 3), "sampler stalled after the clock went back"
    finally:
        guard.stop()


def test_guard_installed_and_sampled_from_a_thread_pool_worker() -> None:
    """install(), sample(), health() and uninstall() from ThreadPoolExecutor workers work and
    the sampler keeps running after the worker that installed it returns."""
    from concurrent.futures import ThreadPoolExecutor

    def install_in_worker() -> Guard:
        guard = runtime_guard.install(interval=0.02)
        guard.sample()
        return guard

    def use_in_worker() -> dict[str, Any]:
        guard = runtime_guard.get_guard()
        assert guard is not None
        guard.sample()
        return guard.health()

    with ThreadPoolExecutor(max_workers=4) as pool:
        guard = pool.submit(install_in_worker).result(timeout=30)
        healths = [f.result(timeout=30) for f in [pool.submit(use_in_worker) for _ in range(16)]]
        taken = len(guard.history)
        deadline = time.monotonic() + 10
        while len(guard.history) <= taken + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(guard.history) > taken + 2, "sampler stopped with its installing worker"
        pool.submit(runtime_guard.uninstall).result(timeout=30)
    assert all(h["status"] in ("ok", "degraded", "critical") for h in healths)
    assert runtime_guard.get_guard() is None
    assert not [t for t in threading.enumerate() if t.name.startswith("runtime-guard")]


class _Counting(Component):
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.samples = 0

    def on_sample(self, guard: Guard, sample: Any) -> None:
        self.samples += 1
        if self.fail:
            raise RuntimeError("component bug")


def test_components_run_and_are_found_by_name_exactly_while_attached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A component runs on the samples taken while it is attached: one attached later runs
    from the next sample, one of the same name replaces it, a removed one stops, and one
    that raises is switched off after its first failure; ``component(name)`` says the same."""
    guard = make_guard(FakeProbe())
    first, second, broken = _Counting("a"), _Counting("a"), _Counting("b", fail=True)
    try:
        guard.sample()
        guard.add_component(first)
        guard.sample()
        assert (first.samples, guard.component("a")) == (1, first)
        guard.add_component(second)  # same name: replaces the first
        guard.add_component(broken)
        with caplog.at_level(logging.ERROR, logger="runtime_guard"):
            guard.sample()
            guard.sample()
        assert (first.samples, second.samples, broken.samples) == (1, 2, 1)
        assert guard.component("a") is second and guard.component("b") is None
        assert "component 'b' failed in on_sample" in caplog.text
        guard.remove_component(second)
        guard.sample()
        assert second.samples == 2 and guard.component("a") is None
    finally:
        guard.stop()
