"""Workers of one container agree on who recycles: published figures and a file lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime_guard._container import CONTAINER_DIR_ENV
from runtime_guard._coordination import (
    STALE_SECONDS,
    SUBDIRECTORY,
    Coordinator,
    limit_group,
    recycling_directory,
)

# A second worker: takes the lock, says so, and holds it until killed.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from runtime_guard._coordination import Coordinator
    coordinator = Coordinator(sys.argv[1])
    print("locked" if coordinator.try_lock("test") else "busy", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the recycle lock of ``tmp_path``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait(10)
    proc.stdout.close()


def test_recycles_are_coordinated_in_the_containers_shared_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock and figures live under the container's shared directory; none when it is off."""
    monkeypatch.setenv(CONTAINER_DIR_ENV, str(tmp_path))
    assert recycling_directory() == str(tmp_path / SUBDIRECTORY)
    assert recycling_directory("parent-7") == str(tmp_path / SUBDIRECTORY / "parent-7")
    monkeypatch.setenv(CONTAINER_DIR_ENV, "off")
    assert recycling_directory() is None


def test_workers_limited_by_their_own_rss_take_turns_only_with_their_siblings() -> None:
    """A cgroup's working set is the container's: one group; a process's own RSS (no cgroup
    limit, a per-process limit) groups only the children of one parent."""
    cgroup = {"rss": "/proc", "usage": "cgroup v2 working set", "limit": "cgroup v2 limit"}
    assert limit_group(cgroup) is None
    own = {"rss": "/proc", "usage": "process RSS (/proc)", "limit": "physical RAM"}
    assert limit_group(own) == f"parent-{os.getppid()}"


def test_published_figures_are_read_back_and_the_dead_are_dropped(tmp_path: Path) -> None:
    """peers() lists live workers' latest figures and removes files of gone or silent ones."""
    me = Coordinator(str(tmp_path))
    me.publish(started=100.0, growth=5 << 20, rising=4 << 20)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(gone.stdout)
    for pid, updated in ((dead_pid, time.time()), (os.getppid(), time.time() - STALE_SECONDS - 1)):
        data = {"pid": pid, "started": 1.0, "growth": 1, "rising": 1, "updated": updated}
        (tmp_path / f"{pid}.worker").write_text(json.dumps(data))
    (tmp_path / "junk.worker").write_text("{not json")
    peers = me.peers()
    assert [(p.pid, p.growth, p.rising) for p in peers] == [(os.getpid(), 5 << 20, 4 << 20)]
    assert not (tmp_path / f"{dead_pid}.worker").exists()
    assert not (tmp_path / f"{os.getppid()}.worker").exists()
    me.close()
    assert me.peers() == []


def test_a_worker_whose_file_was_removed_as_stale_publishes_again(tmp_path: Path) -> None:
    """A stopped worker's file removed as stale is written anew once it publishes again."""
    me = Coordinator(str(tmp_path))
    me.publish(started=1.0, growth=1, rising=1)
    (tmp_path / f"{os.getpid()}.worker").unlink()
    me.publish(started=1.0, growth=2, rising=2)
    assert [(p.pid, p.growth) for p in me.peers()] == [(os.getpid(), 2)]
    me.close()


def test_only_one_process_holds_the_lock_until_it_exits(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    """The lock is exclusive across processes, names its holder, and frees when it exits."""
    me = Coordinator(str(tmp_path))
    assert me.try_lock("mine") is False
    assert me.holder() is not None
    assert me.holder()["pid"] == holder.pid  # type: ignore[index]
    holder.kill()
    holder.wait(10)
    assert me.holder() is None
    assert me.try_lock("mine") is True
    assert me.holding()
    assert me.holder()["pid"] == os.getpid()  # type: ignore[index]
    me.release()
    assert not me.holding() and me.holder() is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_does_not_inherit_the_lock(tmp_path: Path) -> None:
    """After fork the child holds no lock, and closing its copy leaves the parent's in place."""
    me = Coordinator(str(tmp_path))
    assert me.try_lock("parent")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        me.after_fork()
        code = 0 if not me.holding() and me.try_lock("child") is False else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert me.holder()["pid"] == os.getpid()  # type: ignore[index]
    me.close()


def test_an_unusable_directory_means_deciding_alone(tmp_path: Path) -> None:
    """Where the directory cannot be made, the worker neither fails nor waits for others."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    me = Coordinator(str(blocker / "sub"))
    me.publish(started=1.0, growth=1, rising=1)
    assert me.peers() == []
    assert me.try_lock("alone") is True
    assert me.holder() is None
