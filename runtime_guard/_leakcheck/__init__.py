"""Leak checks for tests: rerun a body, settle the heap, judge figures by CPython's ``-R`` rule.

The pytest plugin (``runtime_guard.pytest_plugin``) only wires markers, options and the
fixture to :class:`LeakCheck`; everything that measures and judges lives in this package.
"""

from runtime_guard._leakcheck.check import Figure, LeakCheck, LeakLine, LeakResult
from runtime_guard._leakcheck.clients import Unreleased
from runtime_guard._leakcheck.fixture import LeakBlock, LeakChecker
from runtime_guard._leakcheck.options import CHECKS, LeakCheckOptions
from runtime_guard._leakcheck.settle import settle

__all__ = [
    "CHECKS",
    "Figure",
    "LeakBlock",
    "LeakCheck",
    "LeakCheckOptions",
    "LeakChecker",
    "LeakLine",
    "LeakResult",
    "Unreleased",
    "settle",
]
