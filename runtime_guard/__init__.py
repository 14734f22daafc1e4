"""runtime_guard: an in-process memory guard for long-running Python servers."""

# The names below are imported on first use (PEP 562): pytest imports this package for its
# plugin in every session, and a server imports it in every worker, so importing every
# module up front would cost each of them whether or not they use that part.

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime_guard import _lazy
from runtime_guard._version import __version__ as __version__

if TYPE_CHECKING:
    from runtime_guard import (
        signals as signals,
    )
    from runtime_guard._errors import (
        ConfigError as ConfigError,
    )
    from runtime_guard._install import (
        get_guard as get_guard,
    )
    from runtime_guard._install import (
        install as install,
    )
    from runtime_guard._install import (
        uninstall as uninstall,
    )
    from runtime_guard.guard import (
        Guard as Guard,
    )
    from runtime_guard.leaks.report import (
        LeakReport as LeakReport,
    )
    from runtime_guard.limiters import (
        Limiter as Limiter,
    )
    from runtime_guard.limiters import (
        LimiterTimeout as LimiterTimeout,
    )
    from runtime_guard.limiters import (
        limiter as limiter,
    )
    from runtime_guard.overlap import (
        no_overlap as no_overlap,
    )
    from runtime_guard.pressure import (
        Pressure as Pressure,
    )
    from runtime_guard.relief import (
        ReliefResult as ReliefResult,
    )
    from runtime_guard.sample import (
        Sample as Sample,
    )
    from runtime_guard.shedding import (
        Feature as Feature,
    )
    from runtime_guard.shedding import (
        enabled as enabled,
    )
    from runtime_guard.shedding import (
        feature as feature,
    )
    from runtime_guard.shedding import (
        register_cache as register_cache,
    )
    from runtime_guard.shedding import (
        sheddable as sheddable,
    )
    from runtime_guard.tracking.component import (
        UnreleasedReport as UnreleasedReport,
    )
    from runtime_guard.tracking.registry import (
        live_objects as live_objects,
    )
    from runtime_guard.tracking.registry import (
        track as track,
    )

# The one list of public names: each name and the module it is imported from on first use.
_HOMES = {
    "ConfigError": "_errors",
    "Feature": "shedding",
    "Guard": "guard",
    "LeakReport": "leaks.report",
    "Limiter": "limiters",
    "LimiterTimeout": "limiters",
    "Pressure": "pressure",
    "ReliefResult": "relief",
    "Sample": "sample",
    "UnreleasedReport": "tracking.component",
    "enabled": "shedding",
    "feature": "shedding",
    "get_guard": "_current",
    "install": "_install",
    "limiter": "limiters",
    "live_objects": "tracking.registry",
    "no_overlap": "overlap",
    "register_cache": "shedding",
    "sheddable": "shedding",
    "signals": "",  # the module itself
    "track": "tracking.registry",
    "uninstall": "_install",
}

__getattr__, __dir__, _names = _lazy.attach(__name__, _HOMES)
__all__ = sorted([*_names, "__version__"])  # noqa: PLE0605
