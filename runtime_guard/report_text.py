"""Moved to :mod:`runtime_guard.reports.text`; this module keeps 0.1's imports working."""

from runtime_guard.reports.text import *  # noqa: F403
from runtime_guard.reports.text import __all__ as _moved

__all__ = list(_moved)
