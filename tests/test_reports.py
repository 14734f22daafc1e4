"""Reports on disk: their caps per kind and per file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from runtime_guard._reports import MAX_REPORT_BYTES, MAX_REPORT_FILES, write_report


def test_at_most_max_report_files_of_each_kind_are_kept(tmp_path: Path) -> None:
    """Writing more reports of one kind than the cap keeps only the newest MAX_REPORT_FILES,
    and never removes another kind's files or files the guard did not write."""
    (tmp_path / "notes.json").write_text("{}")
    other = write_report(str(tmp_path), "relief", {"n": -1})
    paths = [write_report(str(tmp_path), "leak", {"n": n}) for n in range(MAX_REPORT_FILES + 20)]
    leaks = sorted(tmp_path.glob("runtime-guard-leak-*.json"))
    assert len(leaks) == MAX_REPORT_FILES
    assert all(json.loads(p.read_text())["kind"] == "leak" for p in leaks)
    assert paths[-1] is not None and os.path.exists(paths[-1])
    assert other is not None and os.path.exists(other)
    assert (tmp_path / "notes.json").exists()


def test_a_report_over_max_report_bytes_is_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A report larger than MAX_REPORT_BYTES as JSON is refused and logged, not written."""
    with caplog.at_level(logging.WARNING, logger="runtime_guard"):
        path = write_report(str(tmp_path), "episode", {"blob": "x" * (MAX_REPORT_BYTES + 1)})
    assert path is None
    assert list(tmp_path.iterdir()) == []
    assert any("not written" in r.getMessage() for r in caplog.records)
    assert write_report(str(tmp_path), "episode", {"blob": "x" * 1000}) is not None
