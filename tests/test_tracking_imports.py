"""The import hook: dotted names tracked once imported, other imports untouched."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from runtime_guard.tracking import live_objects, track
from runtime_guard.tracking.imports import watcher


def test_dotted_name_is_tracked_when_its_module_is_imported(tmp_path: Path) -> None:
    """``track("pkg.mod.Class")`` before the import tracks the class once the module loads."""
    (tmp_path / "rg_late_module.py").write_text(
        "class Thing:\n    def close(self):\n        pass\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        track("rg_late_module.Thing", max_live=1)
        assert watcher in sys.meta_path
        assert "rg_late_module.Thing" not in live_objects()
        module = importlib.import_module("rg_late_module")
        assert module.__loader__.__class__.__name__ == "SourceFileLoader"
        thing = module.Thing()
        data = live_objects()["rg_late_module.Thing"]
        assert data["live"] == 1 and data["max_live"] == 1
        assert watcher not in sys.meta_path
        thing.close()
        assert live_objects()["rg_late_module.Thing"]["released"] == 1
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("rg_late_module", None)


def test_import_watcher_ignores_other_modules() -> None:
    """Unwatched imports get nothing from the hook: it answers None without looking further."""
    track("rg_never_imported_module.Thing")
    assert watcher.find_spec("json", None) is None
    assert watcher.find_spec("rg_unrelated", None) is None
    assert watcher.watching() == ["rg_never_imported_module"]
