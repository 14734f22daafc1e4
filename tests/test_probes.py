"""Memory readings: fixture /proc and cgroup trees, and the real machine."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time
from pathlib import Path

import psutil
import pytest

from runtime_guard.config import Config
from runtime_guard.guard import Guard
from runtime_guard.probes import (
    STAT_EVERY,
    MemoryProbe,
    RssReader,
    _stat_value,
    find_cgroup_memory,
    physical_memory,
)

ROOTS = Path(__file__).parent / "fixtures" / "roots"
RAM = 16 * 2**30
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 2**20


def probe(root: str, **kwargs: object) -> MemoryProbe:
    kwargs.setdefault("rlimit", lambda: None)
    return MemoryProbe(str(ROOTS / root), **kwargs)  # type: ignore[arg-type]


def test_v2_container_limit_and_working_set() -> None:
    """In a v2 container the limit is memory.max and usage is current minus inactive_file."""
    p = probe("cgroup_v2")
    reading = p.read()
    assert reading.limit == 512 * MiB
    assert reading.usage == 300 * MiB - 50 * MiB
    assert reading.rss == 25600 * PAGE
    assert reading.fraction == pytest.approx(250 / 512)
    assert p.sources["limit"].startswith("cgroup v2")
    assert "working set" in p.sources["usage"]


def _writable_v2(tmp_path: Path) -> tuple[MemoryProbe, Path]:
    shutil.copytree(ROOTS / "cgroup_v2", tmp_path / "root")
    found = MemoryProbe(str(tmp_path / "root"), rlimit=lambda: None)
    return found, tmp_path / "root" / "sys" / "fs" / "cgroup"


def _set_cgroup(cgroup: Path, current: int, inactive: int) -> None:
    # Written in place: the probe keeps both files open.
    with open(cgroup / "memory.current", "r+b") as f:
        f.write(f"{current}\n".encode().ljust(32))
    with open(cgroup / "memory.stat", "r+b") as f:
        f.write(f"anon 1\ninactive_file {inactive}\n".encode().ljust(256))


def test_page_cache_that_only_ages_counts_within_a_few_readings(tmp_path: Path) -> None:
    """inactive_file changing under an unchanged usage is seen within STAT_EVERY readings."""
    p, cgroup = _writable_v2(tmp_path)
    _set_cgroup(cgroup, 300 * MiB, 50 * MiB)
    assert p.read().usage == 250 * MiB
    _set_cgroup(cgroup, 300 * MiB, 10 * MiB)  # 40 MiB of cache became active: in use
    seen = [p.read().usage for _ in range(STAT_EVERY)]
    assert seen[-1] == 290 * MiB
    assert seen[0] == 250 * MiB  # memory.stat was not read again at once


def test_usage_that_moves_reads_memory_stat_again_at_once(tmp_path: Path) -> None:
    """A file read into page cache moves usage and inactive_file together: no false rise."""
    p, cgroup = _writable_v2(tmp_path)
    _set_cgroup(cgroup, 300 * MiB, 50 * MiB)
    assert p.read().usage == 250 * MiB
    _set_cgroup(cgroup, 400 * MiB, 150 * MiB)
    assert p.read().usage == 250 * MiB


def test_memory_stat_values_are_found_wherever_they_stand() -> None:
    """The first line, a middle line, a missing key and a value that is not a number."""
    stat = b"total_inactive_file 7\ninactive_file 5\nx 1\nbad z\n"
    assert _stat_value(stat, b"total_inactive_file") == 7
    assert _stat_value(stat, b"inactive_file") == 5
    assert _stat_value(stat, b"x") == 1
    assert _stat_value(b"x 1", b"x") == 1
    assert _stat_value(stat, b"file") is None
    assert _stat_value(stat, b"bad") is None


def test_v2_nested_takes_the_tightest_ancestor() -> None:
    """The tightest limit on the path wins, and usage is read from that same cgroup."""
    p = probe("cgroup_v2_nested")
    reading = p.read()
    assert reading.limit == 1024 * MiB
    assert reading.usage == 600 * MiB - 50 * MiB
    assert "kubepods/pod1" in p.sources["limit"]
    assert not p.sources["limit"].endswith("ctr limit")


def test_v2_without_limit_measures_rss_against_ram() -> None:
    """Where no cgroup on the path has a limit, usage is the process RSS against RAM."""
    p = probe("cgroup_v2_unlimited")
    reading = p.read()
    assert reading.limit == RAM
    assert reading.usage == reading.rss == 25600 * PAGE
    assert p.sources["limit"] == "physical RAM"
    assert p.sources["usage"].startswith("process RSS")


def test_v1_container_limit_and_hierarchical_inactive_file() -> None:
    """cgroup v1 uses limit_in_bytes, usage_in_bytes and total_inactive_file."""
    p = probe("cgroup_v1")
    reading = p.read()
    assert reading.limit == 256 * MiB
    assert reading.usage == 160 * MiB - 30 * MiB
    assert p.sources["limit"].startswith("cgroup v1")


def test_v1_near_2_63_means_unlimited() -> None:
    """The v1 'unlimited' value is no limit: RLIMIT_AS, then RAM, is the denominator."""
    assert find_cgroup_memory(str(ROOTS / "cgroup_v1_unlimited"), RAM) is None
    p = probe("cgroup_v1_unlimited", rlimit=lambda: 3 * 2**30)
    assert p.read().limit == 3 * 2**30
    assert p.sources["limit"] == "RLIMIT_AS"


def test_cgroup_limit_above_ram_is_no_limit() -> None:
    """A container limit larger than the machine is not what kills the process."""
    p = probe("cgroup_v2_above_ram")
    assert p.read().limit == RAM
    assert p.sources["limit"] == "physical RAM"


def test_memory_limit_replaces_the_denominator_only() -> None:
    """memory_limit= changes the limit; usage still follows the cgroup rule."""
    p = probe("cgroup_v2", memory_limit=1000 * MiB)
    reading = p.read()
    assert reading.limit == 1000 * MiB
    assert reading.usage == 250 * MiB
    assert p.sources["limit"] == "memory_limit option"


def test_process_limit_takes_the_higher_fraction() -> None:
    """With process_limit the process's RSS against its budget counts when it is higher."""
    rss = 25600 * PAGE
    p = probe("cgroup_v2", process_limit=rss * 2)
    assert p.read().fraction == pytest.approx(0.5)
    p = probe("cgroup_v2", process_limit=rss * 100)
    assert p.read().fraction == pytest.approx(250 / 512)


def test_unreadable_sources_fall_back_and_say_so() -> None:
    """Garbage cgroup and statm files fall back to psutil and physical RAM."""
    p = probe("unreadable")
    reading = p.read()
    assert p.sources["rss"] == "psutil"
    assert reading.rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.5)
    assert reading.limit == RAM


def test_cgroup_usage_vanishing_falls_back_to_rss(tmp_path: Path) -> None:
    """If the cgroup's files disappear mid-run, usage becomes RSS instead of an error."""
    import shutil

    root = tmp_path / "root"
    shutil.copytree(ROOTS / "cgroup_v2", root)
    p = MemoryProbe(str(root), rlimit=lambda: None)
    assert p.read().usage == 250 * MiB
    p._cgroup._usage.close()  # type: ignore[union-attr]
    reading = p.read()
    assert reading.usage == reading.rss
    assert p.sources["usage"].startswith("process RSS")


def test_limit_change_is_noticed_on_rediscovery(tmp_path: Path) -> None:
    """A container limit raised at run time is picked up by discover()."""
    import shutil

    root = tmp_path / "root"
    shutil.copytree(ROOTS / "cgroup_v2", root)
    p = MemoryProbe(str(root), rlimit=lambda: None)
    assert p.limit == 512 * MiB
    (root / "sys/fs/cgroup/memory.max").write_text("1073741824\n")
    p.discover()
    assert p.read().limit == 1024 * MiB


def test_physical_memory_from_meminfo() -> None:
    """MemTotal is read in kB and returned in bytes."""
    assert physical_memory(str(ROOTS / "cgroup_v2")) == RAM


def test_real_rss_matches_psutil() -> None:
    """On this machine the statm reading agrees with psutil's RSS."""
    reader = RssReader()
    assert reader.source == "/proc/self/statm"
    assert reader.read() == pytest.approx(psutil.Process().memory_info().rss, rel=0.05)


def test_real_usage_rises_with_200mb_and_falls_after_free() -> None:
    """Allocating and touching 200 MB raises RSS and usage by about that; freeing lowers it."""
    p = MemoryProbe()
    gc.collect()
    before = p.read()
    block = bytearray(200 * 10**6)
    for i in range(0, len(block), PAGE):
        block[i] = 1
    during = p.read()
    assert during.rss - before.rss == pytest.approx(200 * 10**6, rel=0.1)
    assert during.usage - before.usage == pytest.approx(200 * 10**6, rel=0.1)
    del block
    after = p.read()
    assert during.rss - after.rss == pytest.approx(200 * 10**6, rel=0.1)
    p.close()


def test_real_machine_sources_are_named() -> None:
    """The real probe names every source it used, and the limit is positive."""
    p = MemoryProbe()
    assert p.limit > 0
    assert set(p.sources) >= {"rss", "usage", "limit"}
    p.close()


def test_psutil_raising_with_no_statm_makes_health_unknown_and_logs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With statm missing and psutil's memory_info() raising, the running sampler logs the
    failure once, health() says unknown instead of repeating stale figures, nothing raises
    into the host, and readings resume when psutil answers again."""
    probe = MemoryProbe(root=str(tmp_path))  # a root without /proc/self/statm
    assert probe.sources["rss"] == "psutil"
    guard = Guard(Config.from_options({"interval": 0.01}, environ={}), probe=probe)
    assert guard.health()["status"] == "ok"

    def denied(self: psutil.Process) -> None:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "memory_info", denied)
    with caplog.at_level(logging.WARNING, logger="runtime_guard"):
        guard.start()
        try:
            deadline = time.monotonic() + 10
            while guard._sample_failures < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            health = guard.health()
            assert health["status"] == "unknown"
            assert "AccessDenied" in health["error"]
            monkeypatch.undo()
            samples = len(guard.history)
            while len(guard.history) <= samples and time.monotonic() < deadline:
                time.sleep(0.01)
            assert guard.health()["status"] == "ok"
        finally:
            guard.stop()
    assert len([r for r in caplog.records if "sample failed" in r.getMessage()]) == 1


def test_runtime_probe_counts_the_childs_own_descriptors_after_fork() -> None:
    """After fork() and reopen(), descriptors the child closes are no longer counted; the
    parent's directory, held open, would keep counting the parent's."""
    import warnings

    from runtime_guard.probes import RuntimeProbe

    probe = RuntimeProbe()
    extra = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
    with warnings.catch_warnings():  # Python 3.12 warns of fork() with threads running
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            probe.reopen()
            before = probe.fds()
            for fd in extra:
                os.close(fd)
            code = 0 if probe.fds() == before - 3 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    for fd in extra:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
