"""Moved to :mod:`runtime_guard.reports.statuspage`; this module keeps 0.1's imports working."""

from runtime_guard.reports.statuspage import *  # noqa: F403
from runtime_guard.reports.statuspage import __all__ as _moved

__all__ = list(_moved)
