"""Reports on disk: owner-only, named by the guard alone, never overwriting, capped; JSON only."""

from __future__ import annotations

import ast
import json
import os
import re
import stat
import types
from pathlib import Path

import pytest

import runtime_guard
from runtime_guard import _reports
from runtime_guard._reports import MAX_REPORT_BYTES, MAX_REPORT_FILES, write_report

NAME = re.compile(
    r"runtime-guard-(leak|unreleased|relief|pressure|episode)-\d{8}T\d{6}-\d+-\d+\.json"
)

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


def test_reports_are_capped_per_kind_and_other_files_are_left(tmp_path: Path) -> None:
    """Only the newest MAX_REPORT_FILES of a kind stay; other kinds and foreign files are kept."""
    (tmp_path / "notes.json").write_text("{}")
    write_report(str(tmp_path), "episode", {"n": -1})
    for n in range(MAX_REPORT_FILES + 5):
        write_report(str(tmp_path), "leak", {"n": n})
    leaks = sorted(tmp_path.glob("runtime-guard-leak-*.json"))
    assert len(leaks) == MAX_REPORT_FILES
    kept = {json.loads(p.read_text())["n"] for p in leaks}
    assert kept == set(range(5, MAX_REPORT_FILES + 5))
    assert (tmp_path / "notes.json").exists()
    assert len(list(tmp_path.glob("runtime-guard-episode-*.json"))) == 1


def test_oversized_or_unserialisable_reports_are_not_written(tmp_path: Path) -> None:
    """A report over MAX_REPORT_BYTES is dropped with a log line, never half-written."""
    assert write_report(str(tmp_path), "leak", {"blob": "x" * MAX_REPORT_BYTES}) is None
    assert write_report(str(tmp_path), "leak", {"bad": float("nan"), 1: {2: 3}}) is not None
    assert len(list(tmp_path.iterdir())) == 1


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
