"""The one size parser and formatter."""

from __future__ import annotations

import pytest

from runtime_guard._sizes import SIZE_FORM, format_size, parse_size


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


def test_format_size_binary_units() -> None:
    """Sizes are shown in binary units with one decimal."""
    assert format_size(512) == "512 B"
    assert format_size(1.5 * 2**30) == "1.5 GiB"
    assert format_size(-3 * 2**20) == "-3.0 MiB"
