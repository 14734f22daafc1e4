"""runtime_guard: an in-process memory guard for long-running Python servers."""

from runtime_guard import signals
from runtime_guard.config import ConfigError
from runtime_guard.guard import Guard, get_guard, install, uninstall
from runtime_guard.leaks import LeakReport
from runtime_guard.limiter import Limiter, LimiterTimeout, limiter
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
