"""Threads, asyncio tasks and file descriptors: counted on every sample, judged for growth.

:mod:`~runtime_guard.resources.creation` records where each thread and task was made;
:mod:`~runtime_guard.resources.fds` tells descriptors' kinds and owners;
:mod:`~runtime_guard.resources.component` judges the counts and sends
``resources_growing`` with a :class:`ResourceReport`.
"""

from runtime_guard.resources.component import ResourceReport
from runtime_guard.resources.creation import CreationHooks, default_hooks
from runtime_guard.resources.fds import describe_fds

__all__ = [
    "CreationHooks",
    "ResourceReport",
    "default_hooks",
    "describe_fds",
]
