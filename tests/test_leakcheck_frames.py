"""Whose code a file is, to the leak check: the user's, a library's, or the machinery's."""

from __future__ import annotations

import json
import os

import _pytest.config
import _pytest.python
import pluggy
import redis

from runtime_guard._leakcheck import check
from runtime_guard._leakcheck.frames import Kind, kind, machinery_module
from runtime_guard._leakcheck.scan import machinery, shown, user_frame


def test_files_are_the_users_a_librarys_or_the_machinerys() -> None:
    """Tests and applications are the user's; the standard library, installed packages
    and generated code are libraries; runtime_guard, tracemalloc and pytest are machinery."""
    assert kind(__file__) is Kind.USER
    assert kind(os.path.abspath("app/views.py")) is Kind.USER
    assert kind(json.__file__) is Kind.LIBRARY
    assert kind(redis.__file__) is Kind.LIBRARY
    assert kind("<string>") is Kind.LIBRARY
    assert kind(check.__file__) is Kind.MACHINERY
    assert kind(_pytest.python.__file__) is Kind.MACHINERY
    assert kind(pluggy.__file__) is Kind.MACHINERY


def test_an_allocation_is_named_at_its_first_frame_in_the_users_code() -> None:
    """The user's line below a library's frames is the one named; an allocation whose
    first frame outside libraries is the machinery's is the check's own."""
    frames = ((json.__file__, 10), (__file__, 20), (_pytest.python.__file__, 30))
    assert user_frame(frames) == (__file__, 20)
    assert user_frame(frames[:1]) is None
    assert not machinery(frames)
    assert machinery(((json.__file__, 10), (check.__file__, 5), (__file__, 20)))


def test_library_paths_are_shown_from_where_they_are_installed() -> None:
    """A library's file is shown as ``package/module.py``, the user's relative to the
    working directory."""
    assert shown(redis.__file__) == "redis/__init__.py"
    assert shown(json.__file__) == "json/__init__.py"
    assert shown(os.path.abspath("app/views.py")) == os.path.join("app", "views.py")


def test_modules_of_the_machinery_are_told_from_the_users_and_libraries() -> None:
    """pytest's config and plugin manager are the machinery's classes, whose instances the
    search for a holder skips; the user's classes and a library's are not."""
    machinery: tuple[type, ...] = (_pytest.config.Config, pluggy.PluginManager, check.LeakCheck)
    for cls in machinery:
        assert machinery_module(cls.__module__), cls
    for other in (redis.Redis, json.JSONDecoder, type("Local", (), {})):
        assert not machinery_module(other.__module__), other
