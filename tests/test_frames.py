"""The one frame classifier: whose code a file is, as every report decides it."""

from __future__ import annotations

import json
import os
import tracemalloc

import pytest
import redis

import runtime_guard
from runtime_guard import _frames
from runtime_guard._frames import FrameKind, is_library, is_stdlib, is_user, kind


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        (runtime_guard.__file__, FrameKind.GUARD),
        (tracemalloc.__file__, FrameKind.GUARD),
        ("<frozen importlib._bootstrap>", FrameKind.GUARD),
        (json.__file__, FrameKind.STDLIB),
        ("<string>", FrameKind.STDLIB),
        ("<attrs generated init foo.Bar>", FrameKind.STDLIB),
        (redis.__file__, FrameKind.LIBRARY),
        (pytest.__file__, FrameKind.LIBRARY),
        (__file__, FrameKind.USER),
        ("<stdin>", FrameKind.USER),
        ("/srv/app/views.py", FrameKind.USER),
    ],
)
def test_each_kind_of_file_is_classified(filename: str, expected: FrameKind) -> None:
    """The guard, the stdlib, installed packages and the user's code are told apart."""
    assert kind(filename) is expected


def test_a_site_packages_directory_anywhere_is_a_library() -> None:
    """A virtualenv's site-packages outside the interpreter's prefix still counts as library."""
    path = os.path.join(os.sep, "opt", "venv", "lib", "python3", "site-packages", "x", "y.py")
    assert kind(path) is FrameKind.LIBRARY
    assert kind(path.replace("site-packages", "dist-packages")) is FrameKind.LIBRARY


def test_predicates_agree_with_the_kind() -> None:
    """is_user, is_library and is_stdlib are views of the one kind."""
    assert is_user(__file__) and not is_library(__file__)
    assert is_library(json.__file__) and is_stdlib(json.__file__)
    assert is_library(redis.__file__) and not is_stdlib(redis.__file__)
    assert is_library(runtime_guard.__file__) and not is_stdlib(runtime_guard.__file__)


def test_answers_are_cached_per_file() -> None:
    """A file is classified once; the hot path reads the cache."""
    kind(__file__)
    assert _frames.cache[__file__] is FrameKind.USER
