"""Moved to :mod:`runtime_guard.reports.timeline`; this module keeps 0.1's imports working."""

from runtime_guard.reports.timeline import *  # noqa: F403
from runtime_guard.reports.timeline import __all__ as _moved

__all__ = list(_moved)
