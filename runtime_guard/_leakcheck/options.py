"""What one leak check does: :class:`LeakCheckOptions` and the validation of each argument."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from runtime_guard._units import SIZE_FORM, format_size, parse_size

__all__ = ["CHECKS", "LeakCheckOptions"]

CHECKS = ("heap", "objects", "fds", "threads", "tasks")
"""Figures a check may judge; ``check=`` picks among them (tracked clients always are)."""


@dataclass(frozen=True)
class LeakCheckOptions:
    """What one leak check does; :meth:`replace` validates keyword overrides."""

    rounds: int = 4
    """Measured rounds after the warm-up, each of one or more calls of the body; the
    verdict needs growth in every one."""
    warmup: int = 2
    """Calls discarded before measuring: first-call caches and lazy singletons fill here."""
    tolerance: int = 100
    """Bytes per call the heap may keep without counting as growth; the small-object count
    forgives one object per 512 of these (none at the default)."""
    tolerance_text: str = "100B"
    """The tolerance as the user wrote it, for messages."""
    check: tuple[str, ...] = CHECKS
    """Which figures are judged."""
    track: tuple[str | type, ...] = ()
    """Extra classes (or dotted names) tracked for the check; unreleased ones fail it."""
    unreleased: bool = False
    """Fail on any tracked client created and still unreleased at the end."""
    single: bool = False
    """Run the body once and judge unreleased clients only (``no_unreleased`` alone)."""

    def once(self) -> LeakCheckOptions:
        """These options for one plain run that judges unreleased clients only."""
        return dataclasses.replace(self, single=True, warmup=0, rounds=1, check=())

    def replace(self, **overrides: Any) -> LeakCheckOptions:
        """Return a copy with ``overrides`` (``None`` values ignored) validated.

        Raises :class:`ValueError` naming the argument, the value and the accepted form.
        """
        values: dict[str, Any] = {}
        for name, value in overrides.items():
            if value is None:
                continue
            if name in ("rounds", "warmup"):
                values[name] = _count(name, value, minimum=1 if name == "rounds" else 0)
            elif name == "tolerance":
                try:
                    values["tolerance"] = parse_size(value)
                except ValueError:
                    raise ValueError(
                        f"tolerance={_arg(value)} is not accepted: expected {SIZE_FORM}"
                    ) from None
                values["tolerance_text"] = (
                    value.strip() if isinstance(value, str) else format_size(values["tolerance"])
                )
            elif name == "check":
                values["check"] = _checks(value)
            elif name == "track":
                values["track"] = _tracked(value)
            elif name == "unreleased":
                values["unreleased"] = bool(value)
            else:
                raise ValueError(
                    f"unknown leak-check argument {name!r}; accepted: rounds, warmup, "
                    "tolerance, track, check"
                )
        return dataclasses.replace(self, **values)


def _count(name: str, value: Any, minimum: int) -> int:
    # isdecimal, not isdigit: int() refuses digits such as "²"; and int() refuses strings
    # of thousands of digits, so a count longer than any sensible one stays a string.
    if isinstance(value, str) and value.strip().isdecimal() and len(value.strip()) <= 18:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name}={_arg(value)} is not accepted: expected a whole number of at least {minimum}"
        )
    return value


def _checks(value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else _items(value)
    unknown = [item for item in items if item not in CHECKS]
    if unknown or not items:
        raise ValueError(
            f"check={_arg(value)} is not accepted: expected some of {', '.join(map(repr, CHECKS))}"
        )
    return tuple(name for name in CHECKS if name in items)


def _tracked(value: Any) -> tuple[str | type, ...]:
    items = (value,) if isinstance(value, (str, type)) else _items(value)
    for item in items:
        if not isinstance(item, (str, type)):
            raise ValueError(
                f"track={_arg(value)} is not accepted: expected classes or dotted names "
                "such as 'redis.Redis'"
            )
    return items


def _arg(value: Any) -> str:
    """``repr(value)`` short enough for a one-line message, whatever was passed."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _items(value: Any) -> tuple[Any, ...]:
    """``value`` as a tuple, or ``(value,)`` when it is no collection (refused by the caller)."""
    try:
        return tuple(value)
    except TypeError:
        return (value,)
