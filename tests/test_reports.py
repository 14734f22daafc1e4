"""Reports on disk: owner-only, named by the guard alone, never overwriting, capped; JSON only."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import stat
import types
from pathlib import Path

import pytest

import runtime_guard
from runtime_guard.reports import files as _reports
from runtime_guard.reports.files import MAX_REPORT_BYTES, MAX_REPORT_FILES, write_report

NAME = re.compile(
    r"runtime-guard-(leak|unreleased|relief|pressure|episode)-\d{8}T\d{6}-\d+-\d+\.json"
)


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


HOSTILE = {
    "type": "../../../etc/cron.d/x",
    "feature": "a/b\\c\x00d",
    "site": "/tmp/../../root/.ssh/authorized_keys",
    "kind": "../escape",
    "name": "..",
}


def test_report_is_owner_only_in_an_owner_only_dir_named_by_the_guard(tmp_path: Path) -> None:
    """Separators and ``..`` in a report never reach its path; the modes are 0600 and 0700."""
    report_dir = tmp_path / "reports" / "nested"
    path = write_report(str(report_dir), "leak", dict(HOSTILE))
    assert path is not None
    assert Path(path).parent == report_dir
    assert NAME.fullmatch(Path(path).name)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(report_dir).st_mode) == 0o700
    assert {p.name for p in tmp_path.rglob("*")} == {"reports", "nested", Path(path).name}
    saved = json.loads(Path(path).read_text(encoding="utf-8"))
    assert saved["type"] == HOSTILE["type"]


def test_only_fixed_kinds_name_files(tmp_path: Path) -> None:
    """A kind outside the guard's own set is refused before anything touches the disk."""
    for kind in ("../leak", "leak/x", "Leak", "", "leak\x00"):
        with pytest.raises(ValueError, match="unknown report kind"):
            write_report(str(tmp_path / "r"), kind, {})
    assert not (tmp_path / "r").exists()


def test_an_existing_file_or_symlink_is_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name already taken (even by a planted symlink) makes the write fail, not follow it."""
    clock = types.SimpleNamespace(gmtime=lambda: None, strftime=lambda *_: "20260101T000000")
    monkeypatch.setattr(_reports, "time", clock)
    monkeypatch.setattr(_reports, "_counter", iter([7, 8]))
    report_dir = tmp_path / "r"
    report_dir.mkdir(mode=0o700)
    target = tmp_path / "victim"
    target.write_text("keep")
    name = f"runtime-guard-leak-20260101T000000-{os.getpid()}-7.json"
    (report_dir / name).symlink_to(target)
    assert write_report(str(report_dir), "leak", {"x": 1}) is None
    assert target.read_text() == "keep"
    second = write_report(str(report_dir), "leak", {"x": 2})
    assert second is not None and second.endswith("-8.json")


def test_the_package_never_evaluates_or_unpickles() -> None:
    """No module of the package imports pickle-like loaders or calls eval/exec: reports are JSON."""
    package = Path(runtime_guard.__file__).parent
    banned_modules = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "yaml"}
    found = []
    for source in sorted(package.rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names = {node.func.id} & {"eval", "exec", "compile", "__import__"}
            else:
                continue
            if names & (banned_modules | {"eval", "exec", "compile", "__import__"}):
                found.append(f"{source.relative_to(package)}:{node.lineno}")
    assert found == []
