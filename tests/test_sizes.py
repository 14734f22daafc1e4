"""The one size parser and formatter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_guard._units import SIZE_FORM, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MB", 512 * 10**6),
        ("1.5GiB", int(1.5 * 2**30)),
        ("800M", 800 * 2**20),
        ("800m", 800 * 2**20),
        ("64 KiB", 64 * 1024),
        ("16KB", 16000),
        ("512Mi", 512 * 2**20),
        ("1024", 1024),
        (" 2 g ", 2 * 2**30),
        ("1TB", 10**12),
        (".5GiB", 2**29),
        (4096, 4096),
        (1.5e9, 1_500_000_000),
    ],
)
def test_accepted_forms(text: object, expected: int) -> None:
    """Byte counts and number-with-unit strings become whole bytes."""
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "bad", ["lots", "", "12 parsecs", "-5MB", -1, True, None, float("nan"), "1e9", "5 M B", [1]]
)
def test_rejected_forms_name_the_accepted_one(bad: object) -> None:
    """Anything else is a ValueError quoting the accepted form or the range."""
    with pytest.raises(ValueError, match="expected"):
        parse_size(bad)


def test_error_message_quotes_the_form() -> None:
    """The message for garbage includes the examples a user can copy."""
    with pytest.raises(ValueError) as info:
        parse_size("lots")
    assert SIZE_FORM in str(info.value)


def test_error_for_a_huge_string_stays_short() -> None:
    """A megabyte of garbage gives a message of a line, not a megabyte."""
    with pytest.raises(ValueError) as info:
        parse_size("x" * 10**6)
    assert len(str(info.value)) < 300


def test_format_size_binary_units() -> None:
    """Sizes are shown in binary units with one decimal."""
    assert format_size(512) == "512 B"
    assert format_size(1.5 * 2**30) == "1.5 GiB"
    assert format_size(-3 * 2**20) == "-3.0 MiB"


@given(st.one_of(st.text(max_size=40), st.integers(), st.floats(), st.none(), st.binary()))
@settings(max_examples=500, deadline=None)
def test_any_input_is_bytes_or_a_clear_value_error(value: object) -> None:
    """Whatever it is given, the parser returns bytes >= 0 or raises ValueError saying why."""
    try:
        size = parse_size(value)
    except ValueError as exc:
        assert "expected" in str(exc)
    else:
        assert isinstance(size, int)
        assert size >= 0


@given(st.integers(min_value=0, max_value=2**50), st.sampled_from(["", "B", "KiB", "MiB", "GiB"]))
def test_round_trip_of_binary_units(number: int, unit: str) -> None:
    """An integer with a binary unit parses to that many units of bytes."""
    factor = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    assert parse_size(f"{number}{unit}") == number * factor
