"""runtime_guard: an in-process memory guard for long-running Python servers."""

# The names below are imported on first use (PEP 562): pytest imports this package for its
# plugin in every session, and importing every module up front cost those sessions 110 ms
# whether or not a test asked for a leak check.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from runtime_guard._version import __version__

# Imported now: importing the module of the same name anywhere would otherwise leave the
# module, not the function, as runtime_guard.limiter.
from runtime_guard.limiter import limiter

if TYPE_CHECKING:
    from runtime_guard import signals
    from runtime_guard.config import ConfigError
    from runtime_guard.guard import Guard, get_guard, install, uninstall
    from runtime_guard.leaks import LeakReport
    from runtime_guard.limiter import Limiter, LimiterTimeout
    from runtime_guard.overlap import no_overlap
    from runtime_guard.pressure import Pressure
    from runtime_guard.relief import ReliefResult
    from runtime_guard.sample import Sample
    from runtime_guard.shedding import Feature, enabled, feature, register_cache, sheddable
    from runtime_guard.tracking import UnreleasedReport, live_objects, track

__all__ = [
    "ConfigError",
    "Feature",
    "Guard",
    "LeakReport",
    "Limiter",
    "LimiterTimeout",
    "Pressure",
    "ReliefResult",
    "Sample",
    "UnreleasedReport",
    "__version__",
    "enabled",
    "feature",
    "get_guard",
    "install",
    "limiter",
    "live_objects",
    "no_overlap",
    "register_cache",
    "sheddable",
    "signals",
    "track",
    "uninstall",
]

_HOMES = {
    "ConfigError": "config",
    "Feature": "shedding",
    "Guard": "guard",
    "LeakReport": "leaks",
    "Limiter": "limiter",
    "LimiterTimeout": "limiter",
    "Pressure": "pressure",
    "ReliefResult": "relief",
    "Sample": "sample",
    "UnreleasedReport": "tracking",
    "enabled": "shedding",
    "feature": "shedding",
    "get_guard": "guard",
    "install": "guard",
    "live_objects": "tracking",
    "no_overlap": "overlap",
    "register_cache": "shedding",
    "sheddable": "shedding",
    "track": "tracking",
    "uninstall": "guard",
}


def __getattr__(name: str) -> Any:
    if name == "signals":
        return importlib.import_module("runtime_guard.signals")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'runtime_guard' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"runtime_guard.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
