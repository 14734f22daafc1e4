"""Growth-leak detection: a robust trend on post-collection baselines, then a diagnosis.

:mod:`~runtime_guard.leaks.detector` judges the sampler's history and, on a suspicion, runs
the bounded diagnosis of :mod:`runtime_guard.diagnosis`; :mod:`~runtime_guard.leaks.report`
is what it concludes.
"""

from runtime_guard.leaks.report import LeakReport

__all__ = ["LeakReport"]
