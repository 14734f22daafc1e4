"""What the interpreter lets the guard measure: real interpreters, started as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime_guard import _interpreter


def _fresh(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter of this Python, with ``env`` added."""
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONMALLOC"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**environ, **env},
        timeout=60,
        check=False,
    )


_UNREAD = "from runtime_guard import _interpreter; print(_interpreter.HEAP_BLOCKS_UNREAD)"


def test_the_default_build_counts_small_objects_and_says_nothing() -> None:
    """With pymalloc (CPython's default), the block count is read as it is: no reason given."""
    assert _interpreter.HEAP_BLOCKS_UNREAD is None
    assert _fresh(_UNREAD).stdout.strip() == "None"


def test_without_pymalloc_the_block_count_is_named_unread_with_the_setting() -> None:
    """Under PYTHONMALLOC=malloc, where sys.getallocatedblocks() reads 0, the reason names it."""
    done = _fresh(_UNREAD, PYTHONMALLOC="malloc")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "sys.getallocatedblocks() reads 0: pymalloc is not in use (PYTHONMALLOC=malloc)"
    )


def test_with_mimalloc_the_block_count_is_named_unread() -> None:
    """Under PYTHONMALLOC=mimalloc the count covers one thread's heap: said so, not read."""
    done = _fresh(_UNREAD, PYTHONMALLOC="mimalloc")
    if "unknown allocator" in done.stderr:
        pytest.skip(f"Python {sys.version_info.major}.{sys.version_info.minor} has no mimalloc")
    assert done.returncode == 0, done.stderr
    assert "PYTHONMALLOC=mimalloc" in done.stdout
    assert "calling thread's mimalloc heap only" in done.stdout


def test_the_interpreters_own_frozen_objects_are_counted_at_start() -> None:
    """What the interpreter itself put in the permanent generation (3.12 does) is known."""
    done = _fresh(
        "import gc; frozen = gc.get_freeze_count(); from runtime_guard import _interpreter; "
        "print(frozen, _interpreter.FROZEN_AT_START)"
    )
    at_start, recorded = done.stdout.split()
    assert at_start == recorded
    if sys.version_info[:2] == (3, 12):
        assert int(recorded) > 0  # the tuples of its static types


def test_strings_interned_for_good_are_counted_where_the_interpreter_keeps_them() -> None:
    """A string interned per call is counted as never freed on 3.12 only; 3.11 keeps no count."""
    counted = _interpreter.immortal_strings
    if sys.version_info < (3, 12):
        assert counted is None
        return
    assert counted is not None
    before = counted()
    sys.intern(f"interned-by-test_interpreter-{os.getpid()}")
    grown = counted() - before
    assert grown == (1 if sys.version_info[:2] == (3, 12) else 0)
    assert _interpreter.INTERNED_IMMORTAL is (sys.version_info[:2] == (3, 12))
