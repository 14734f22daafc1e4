"""Shared fixtures: every test leaves no guard installed behind it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import runtime_guard


@pytest.fixture(autouse=True)
def _no_guard_left_behind() -> Iterator[None]:
    yield
    runtime_guard.uninstall()
