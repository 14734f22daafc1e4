"""runtime_guard: an in-process memory guard for long-running Python servers."""

from runtime_guard import signals
from runtime_guard.config import ConfigError
from runtime_guard.guard import Guard, get_guard, install, uninstall
from runtime_guard.pressure import Pressure
from runtime_guard.sample import Sample

__all__ = [
    "ConfigError",
    "Guard",
    "Pressure",
    "Sample",
    "get_guard",
    "install",
    "signals",
    "uninstall",
]
