"""The cheap readings an untraced round is judged on: descriptors and malloc's bytes in use."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from runtime_guard._leakcheck import readings


def test_descriptors_are_counted_and_named_from_the_fd_directory(tmp_path: Path) -> None:
    """A /proc/self/fd-like directory gives the count and each descriptor's target."""
    fd_dir = tmp_path / "fd"
    fd_dir.mkdir()
    os.symlink("/var/log/app.log", fd_dir / "3")
    os.symlink("socket:[4242]", fd_dir / "7")
    (fd_dir / "not-a-number").write_text("")
    assert readings.fd_count(str(fd_dir)) == 3
    assert readings.fd_targets(fd_dir=str(fd_dir)) == {3: "/var/log/app.log", 7: "socket:[4242]"}
    assert readings.fd_targets({7}, fd_dir=str(fd_dir)) == {7: "socket:[4242]"}


def test_a_missing_fd_directory_reads_as_nothing(tmp_path: Path) -> None:
    """Where the listing is unavailable the figures are empty, never an error."""
    missing = str(tmp_path / "absent")
    assert readings.fd_count(missing) == 0
    assert readings.fd_targets(fd_dir=missing) == {}


def test_the_real_fd_directory_sees_a_file_opened_here(tmp_path: Path) -> None:
    """Opening a file adds one descriptor, named by its path."""
    before = readings.fd_count()
    with open(tmp_path / "open.txt", "w") as handle:
        assert readings.fd_count() == before + 1
        assert readings.fd_targets({handle.fileno()}) == {
            handle.fileno(): str(tmp_path / "open.txt")
        }


def test_malloc_bytes_follow_a_large_allocation_and_its_release() -> None:
    """malloc's bytes in use rise by a buffer beyond pymalloc's reach and fall when it goes."""
    read = readings.malloc_reader()
    if read is None:
        pytest.skip("no mallinfo2 here (not glibc 2.33+): every round is traced instead")
    before = read()
    buffer = bytearray(4 * 1024 * 1024)
    during = read()
    del buffer
    after = read()
    assert during - before >= 4 * 1024 * 1024
    assert during - after >= 4 * 1024 * 1024


def test_no_reader_where_the_c_library_has_no_mallinfo2(monkeypatch: pytest.MonkeyPatch) -> None:
    """A C library without mallinfo2 gives no reader instead of an error."""

    class NoMallinfo:
        def __init__(self, name: object) -> None:
            pass

        def __getattr__(self, name: str) -> object:
            raise AttributeError(name)

    monkeypatch.setattr(ctypes, "CDLL", NoMallinfo)
    assert readings.malloc_reader() is None
