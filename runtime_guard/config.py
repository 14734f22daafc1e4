"""Options: one table of what the guard accepts, read from keywords and the environment."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime_guard._errors import ConfigError
from runtime_guard._units import SIZE_FORM, parse_size
from runtime_guard.pressure import level_name

__all__ = ["ENV_PREFIX", "Config", "ConfigError", "env_name"]

ENV_PREFIX = "RUNTIME_GUARD_"
"""Every option ``name`` is also read from the variable ``RUNTIME_GUARD_<NAME>``."""


def env_name(option: str) -> str:
    """Return the environment variable that carries ``option``."""
    return ENV_PREFIX + option.upper()


# Parsers take a keyword value (any type) or an environment string and return the value,
# raising ValueError with the accepted form; ``from_options`` adds the option's name.
Parser = Callable[[Any], Any]


def _size_or_none(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    size = parse_size(value)
    if size == 0:
        raise ValueError(f"expected {SIZE_FORM} greater than 0, got {value!r}")
    return size


def _positive_float(value: Any) -> float:
    number = _float(value)
    if not number > 0 or math.isinf(number):
        raise ValueError(f"expected a number of seconds greater than 0, e.g. 1.0, got {value!r}")
    return number


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"expected a number, got {value!r}")
    return number


def _fraction(value: Any) -> float:
    number = _float(value)
    if not 0 < number < 1:
        raise ValueError(
            f"expected a fraction of the memory limit between 0 and 1, e.g. 0.85, got {value!r}"
        )
    return number


def _margin(value: Any) -> float:
    number = _float(value)
    if not 0 <= number < 0.5:
        raise ValueError(f"expected a fraction from 0 up to 0.5, e.g. 0.05, got {value!r}")
    return number


def _count(minimum: int) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"expected a whole number of at least {minimum}, got {value!r}")
        return value

    return parse


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false (1/0, yes/no, on/off), got {value!r}")


def _choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")

    return parse


def _path_or_none(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or "\0" in value:
        raise ValueError(f"expected a directory path, got {value!r}")
    return value


def _seconds_or_off(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off")):
        return None
    try:
        return _positive_float(value)
    except ValueError:
        raise ValueError(
            f"expected a number of seconds greater than 0, e.g. 10, or 'off', got {value!r}"
        ) from None


def _drain(value: Any) -> float | str | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _seconds_or_off(value)
    except ValueError:
        raise ValueError(
            f"expected 'auto', a number of seconds greater than 0, e.g. 10, or 'off', got {value!r}"
        ) from None


def _level_or_off(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "off", "none")):
        return None
    try:
        return level_name(value)
    except ValueError as exc:
        raise ValueError(f"{exc}, or 'off'") from None


def _non_negative_seconds(value: Any) -> float:
    number = _float(value)
    if not number >= 0 or math.isinf(number):
        raise ValueError(f"expected a number of seconds of at least 0, e.g. 10, got {value!r}")
    return number


def _positive_size(value: Any) -> int:
    size = _size_or_none(value)
    if size is None:
        raise ValueError(f"expected {SIZE_FORM} greater than 0, got {value!r}")
    return size


def _opt(default: Any, parse: Parser, doc: str) -> Any:
    return field(default=default, metadata={"parse": parse, "doc": doc})


@dataclass(frozen=True)
class Config:
    """The guard's validated options; build it with :meth:`from_options`."""

    memory_limit: int | None = _opt(
        None,
        _size_or_none,
        "Limit that usage is measured against. Default: the tightest cgroup limit, "
        "else RLIMIT_AS, else physical RAM.",
    )
    process_limit: int | None = _opt(
        None, _size_or_none, "Budget for this process's own RSS (several workers in one container)."
    )
    interval: float = _opt(1.0, _positive_float, "Seconds between samples.")
    elevated: float = _opt(0.70, _fraction, "Fraction of the limit for ELEVATED.")
    high: float = _opt(0.85, _fraction, "Fraction of the limit for HIGH.")
    critical: float = _opt(0.95, _fraction, "Fraction of the limit for CRITICAL.")
    hysteresis: float = _opt(
        0.05, _margin, "How far below a threshold usage must fall before the level drops."
    )
    history_size: int = _opt(
        3600, _count(2), "Samples kept in the history ring buffer (an hour at 1 s)."
    )
    emergency: bool = _opt(False, _bool, "Start with every sheddable feature shed.")
    report_dir: str | None = _opt(None, _path_or_none, "Directory where reports are written.")
    track_clients: bool = _opt(True, _bool, "Track known client classes (redis, httpx, ...).")
    tracemalloc: str = _opt(
        "on-demand", _choice("off", "on-demand", "always"), "When tracemalloc may run."
    )
    # relief and shedding (runtime_guard.relief, runtime_guard.shedding)
    relief: bool = _opt(True, _bool, "Run relief (full GC, malloc_trim) automatically.")
    relief_at: str = _opt(
        "elevated",
        level_name,
        "Lowest pressure level at which automatic relief runs.",
    )
    relief_cooldown: float = _opt(
        30.0, _positive_float, "Seconds between automatic reliefs while pressure stays."
    )
    restart_after: float | None = _opt(
        60.0,
        _seconds_or_off,
        "Seconds usage may stay CRITICAL with no worker whose own memory grows before the "
        "worker that grew most is recycled anyway (off: never).",
    )
    # worker recycling (runtime_guard.recycling; runtime_guard.integrations: gunicorn,
    # uvicorn, celery)
    recycle_drain: float | str | None = _opt(
        "auto",
        _drain,
        "Seconds a graceful recycle needs until the worker's memory is back; a worker is "
        "recycled when usage would reach CRITICAL within them (auto: twice the longest "
        "measured in the container, 10 until one is; off: only restart_after).",
    )
    recycle_min_lifetime: float = _opt(
        60.0,
        _non_negative_seconds,
        "Seconds a worker lives at least before a recycle its own growth does not explain "
        "(restart_after, a restart_requested sent by the host).",
    )
    recycle_jitter: float = _opt(
        10.0,
        _non_negative_seconds,
        "Most seconds of random delay before a recycle the host asked for, so workers "
        "do not recycle at once (the guard's own recycles take turns instead).",
    )
    # leak detection (runtime_guard.leaks)
    leak_detection: bool = _opt(True, _bool, "Watch the heap and RSS floors for growth leaks.")
    leak_window: float = _opt(
        10.0, _positive_float, "Seconds per baseline window; each window's minimum is a floor."
    )
    leak_windows: int = _opt(
        30, _count(2), "Floors kept for the trend (the sliding window is this many windows)."
    )
    leak_confirm: int = _opt(
        3, _count(1), "A leak's floor rose in every one of this many last windows (N)."
    )
    leak_min_rate: int = _opt(
        250_000, _positive_size, 'Least growth per minute that is a leak, a size ("0.25MB").'
    )
    leak_warmup: float = _opt(
        60.0, _non_negative_seconds, "Seconds after start before floors count (warm-up)."
    )
    leak_diagnosis_window: float = _opt(
        20.0,
        _positive_float,
        "Most seconds a leak diagnosis traces; it ends sooner once it saw 256 KiB kept.",
    )
    leak_repeat_after: float = _opt(
        3600.0, _positive_float, "Seconds after which a leak that goes on is reported again."
    )
    tracemalloc_duty_cycle: float = _opt(
        0.05,
        _fraction,
        "Most share of wall time tracemalloc may run for repeat diagnoses (never stops "
        "the first one of a leak, nor one asked for).",
    )
    tracemalloc_frames: int = _opt(
        8, _count(1), "Frames kept per allocation when the guard starts tracemalloc."
    )
    # resources that run out before memory (runtime_guard.pools, .resources, .stuck, .looplag)
    track_resources: bool = _opt(
        True,
        _bool,
        "Watch pool checkouts (SQLAlchemy, psycopg_pool, redis) and record where threads and "
        "asyncio tasks are started.",
    )
    checkout_warn_after: float = _opt(
        30.0, _positive_float, "Seconds a pool checkout may be held before it is reported."
    )
    pool_exhausted_after: float = _opt(
        5.0,
        _positive_float,
        "Seconds a pool may have waiters and no free connection before it is reported.",
    )
    resource_window: float = _opt(
        30.0,
        _positive_float,
        "Seconds per window for threads, tasks and file descriptors; each window's minimum "
        "is a floor, and four rising floors in a row are growth.",
    )
    resource_min_growth: int = _opt(
        10,
        _count(1),
        "Least rise of the floor of threads, tasks or file descriptors over those windows "
        "that is reported.",
    )
    loop_lag_threshold: float = _opt(
        0.5,
        _positive_float,
        "Seconds an asyncio event loop may run a callback late before it is reported.",
    )
    loop_lag_pressure: str | None = _opt(
        None,
        _level_or_off,
        "Pressure level the guard is at least at while the loop lag stays above "
        "loop_lag_threshold (off: lag is not a pressure input).",
    )

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> Config:
        """Validate ``options`` over ``environ`` (``os.environ`` by default); keywords win.

        Raises :class:`ConfigError` naming the option or variable, the value and the form.
        """
        environ = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown option {unknown[0]!r}; accepted options: {', '.join(sorted(fields))}"
            )
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for name, spec in fields.items():
            parse: Parser = spec.metadata["parse"]
            if name in options:
                raw, where = options[name], name
            elif env_name(name) in environ:
                raw, where = environ[env_name(name)], env_name(name)
            else:
                continue
            origins[name] = where
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                shown = repr(raw) if len(repr(raw)) <= 80 else repr(raw)[:77] + "..."
                raise ConfigError(f"{where}={shown} is not accepted: {exc}") from None
        config = cls(**values)
        config._check_order(origins)
        return config

    def _check_order(self, origins: Mapping[str, str]) -> None:
        def shown(name: str) -> str:
            return f"{origins.get(name, name)}={getattr(self, name)}"

        if not self.elevated < self.high < self.critical:
            raise ConfigError(
                "thresholds out of order: expected elevated < high < critical, got "
                f"{shown('elevated')}, {shown('high')}, {shown('critical')}"
            )
        if self.hysteresis >= self.elevated:
            raise ConfigError(
                f"{shown('hysteresis')} is not accepted: it must be below {shown('elevated')}"
            )

    def threshold(self, level_name: str) -> float:
        """Return the fraction for ``"elevated"``, ``"high"`` or ``"critical"``."""
        return float(getattr(self, level_name))

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """Return ``(option, default, doc)`` rows, for the README and ``--help``."""
        return [(f.name, repr(f.default), f.metadata["doc"]) for f in dataclasses.fields(cls)]
