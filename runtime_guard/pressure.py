"""Pressure levels and the hysteresis that keeps them from flapping on noise."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Pressure", "PressureTracker"]


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
