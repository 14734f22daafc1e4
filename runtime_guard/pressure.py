"""Pressure levels and the hysteresis that keeps them from flapping on noise."""

from __future__ import annotations

from enum import IntEnum

from runtime_guard._errors import ConfigError

__all__ = ["LEVELS", "Pressure", "PressureTracker", "level", "level_name", "parse_level"]


class Pressure(IntEnum):
    """How close usage is to the limit; ordered, so ``level >= Pressure.HIGH`` reads well."""

    OK = 0
    ELEVATED = 1
    HIGH = 2
    CRITICAL = 3

    @classmethod
    def parse(cls, value: object) -> Pressure:
        """Accept a ``Pressure``, its name in any case (``"high"``) or its number."""
        if isinstance(value, Pressure):
            return value
        if isinstance(value, str) and value.strip().upper() in cls.__members__:
            return cls[value.strip().upper()]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
            return cls(value)
        raise ValueError(
            f"expected a pressure level: 'elevated', 'high' or 'critical', got {value!r}"
        )


LEVELS: tuple[str, ...] = tuple(level.name.lower() for level in Pressure)
"""The level names in order, as options, reports and health spell them."""

_ACTION_LEVELS = "'elevated', 'high' or 'critical'"


def level(value: object, *, allow_ok: bool = False) -> Pressure:
    """The one parser of a level: a :class:`Pressure`, its name in any case or its number.

    ``"ok"`` is refused unless ``allow_ok``, since acting at OK would act all the time.
    Raises ``ValueError`` saying the accepted form; :func:`parse_level` adds the option.
    """
    accepted = f"'ok', {_ACTION_LEVELS}" if allow_ok else _ACTION_LEVELS
    try:
        parsed = Pressure.parse(value)
    except ValueError:
        raise ValueError(f"expected a pressure level, {accepted}") from None
    if parsed == Pressure.OK and not allow_ok:
        raise ValueError(f"expected {accepted} (at 'ok' it would act all the time)")
    return parsed


def level_name(value: object) -> str:
    """:func:`level` as the lower-case name options store (``"high"``)."""
    return level(value).name.lower()


def parse_level(value: object, option: str, *, allow_ok: bool = False) -> Pressure:
    """:func:`level` for an option called ``option``: raises
    :class:`~runtime_guard.ConfigError` naming the option, the value and the accepted form."""
    try:
        return level(value, allow_ok=allow_ok)
    except ValueError as exc:
        raise ConfigError(f"{option}={value!r} is not accepted: {exc}") from None


class PressureTracker:
    """Turns usage fractions into levels: up at once, down only past a margin."""

    def __init__(
        self, elevated: float, high: float, critical: float, hysteresis: float = 0.05
    ) -> None:
        self.thresholds = (0.0, elevated, high, critical)
        """Fraction at which each level starts, indexed by level."""
        self.hysteresis = hysteresis
        """How far below a level's threshold usage must fall to leave that level."""
        self.level = Pressure.OK
        """The current level."""

    def update(self, fraction: float) -> Pressure:
        """Fold in one usage fraction and return the (possibly new) level."""
        up = Pressure.OK
        down = Pressure.OK
        for level in (Pressure.ELEVATED, Pressure.HIGH, Pressure.CRITICAL):
            if fraction >= self.thresholds[level]:
                up = level
            if fraction >= self.thresholds[level] - self.hysteresis:
                down = level
        self.level = up if up > self.level else min(self.level, down)
        return self.level
