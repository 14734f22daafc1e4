"""Pressure levels: thresholds and hysteresis, deterministically."""

from __future__ import annotations

import itertools

import pytest

from runtime_guard.pressure import Pressure, PressureTracker


def levels(fractions: list[float]) -> list[Pressure]:
    tracker = PressureTracker(0.70, 0.85, 0.95, 0.05)
    return [tracker.update(f) for f in fractions]


def test_levels_are_ordered() -> None:
    """OK < ELEVATED < HIGH < CRITICAL, so comparisons read naturally."""
    assert Pressure.OK < Pressure.ELEVATED < Pressure.HIGH < Pressure.CRITICAL


def test_levels_rise_at_once_even_skipping() -> None:
    """A jump straight past several thresholds lands on the highest one crossed."""
    assert levels([0.1, 0.71, 0.96]) == [Pressure.OK, Pressure.ELEVATED, Pressure.CRITICAL]


def test_levels_fall_only_past_the_margin() -> None:
    """Just below a threshold keeps the level; margin below it drops it."""
    assert levels([0.96, 0.93, 0.91, 0.89]) == [
        Pressure.CRITICAL,
        Pressure.CRITICAL,
        Pressure.CRITICAL,
        Pressure.HIGH,
    ]


def test_noise_around_a_threshold_does_not_flap() -> None:
    """Usage wobbling around 0.85 gives one change, not one per sample."""
    seq = levels([0.84, 0.86, 0.84, 0.86, 0.83, 0.86, 0.84])
    changes = sum(1 for a, b in itertools.pairwise(seq) if a != b)
    assert changes == 1


def test_a_large_drop_falls_to_the_right_level() -> None:
    """From CRITICAL to 0.3 the level is OK in one step."""
    assert levels([0.99, 0.3]) == [Pressure.CRITICAL, Pressure.OK]


@pytest.mark.parametrize(
    ("value", "level"),
    [("high", Pressure.HIGH), ("CRITICAL", Pressure.CRITICAL), (1, Pressure.ELEVATED)],
)
def test_parse_accepts_names_and_numbers(value: object, level: Pressure) -> None:
    """Levels may be given by name in any case or by number."""
    assert Pressure.parse(value) is level


def test_parse_rejects_garbage() -> None:
    """An unknown level name is a ValueError listing the names."""
    with pytest.raises(ValueError, match="'high'"):
        Pressure.parse("severe")
