"""Moved to :mod:`runtime_guard.reports.html`; this module keeps 0.1's imports working."""

from runtime_guard.reports.html import *  # noqa: F403
from runtime_guard.reports.html import __all__ as _moved

__all__ = list(_moved)
