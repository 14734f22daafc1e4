"""The one place that turns "512MB" into bytes, and bytes and seconds back into words."""

from __future__ import annotations

import re

__all__ = ["SIZE_FORM", "format_duration", "format_size", "parse_size"]

SIZE_FORM = 'a byte count (536870912) or a number with a unit: "512MB", "1.5GiB", "800M", "64 KiB"'
"""The accepted form, quoted by every error about a size."""

# Units as users write them for containers: SI prefixes spelled with a "B" are powers of
# 1000 (as in Kubernetes' "M"), the "i" forms are powers of 1024, and a bare letter ("800m",
# Docker's --memory form) is binary because that is what Docker means by it.
_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_size(value: object) -> int:
    """Return ``value`` as a whole number of bytes.

    Raises :class:`ValueError` (with :data:`SIZE_FORM` in its message) for anything else,
    including negative numbers, booleans, NaN and unknown units.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_FORM}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a size of 0 or more bytes, got {value!r}")
        return value
    if isinstance(value, float):
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"expected {SIZE_FORM}, got {value!r}")
        return int(value)
    if isinstance(value, str) and len(value) <= 64:
        match = _SIZE_RE.fullmatch(value)
        if match is not None:
            unit = _UNITS.get(match.group(2).lower())
            if unit is not None:
                return int(float(match.group(1)) * unit)
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise ValueError(f"expected {SIZE_FORM}, got {shown}")


def format_size(n: float) -> str:
    """Return ``n`` bytes in binary units, e.g. ``"1.5 GiB"`` or ``"-3.0 MiB"``."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} TiB"


def format_duration(seconds: float | None) -> str:
    """A span of time as a person reads it: ``"3.4 s"``, ``"45 s"``, ``"12.5 min"``,
    ``"2.0 h"``, ``"3.1 days"``; ``"-"`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
