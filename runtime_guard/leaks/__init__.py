"""Growth-leak detection: a robust trend on post-collection baselines, then a diagnosis.

:mod:`~runtime_guard.leaks.detector` judges the sampler's history and, on a suspicion, runs
the bounded diagnosis of :mod:`runtime_guard.diagnosis`; :mod:`~runtime_guard.leaks.report`
is what it concludes.

:class:`LeakReport` is imported on first use: a worker imports this package for its route
counters, and needs the report only once it suspects a leak.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime_guard import _lazy

if TYPE_CHECKING:
    from runtime_guard.leaks.report import LeakReport as LeakReport

__getattr__, __dir__, __all__ = _lazy.attach(__name__, {"LeakReport": "report"})
