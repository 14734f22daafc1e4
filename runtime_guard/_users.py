"""A count of the users of something shared that is on while any of them wants it.

Process-wide hooks (the pool libraries', the thread and task creation hooks) are enabled by
every guard and test that needs them: the first user puts them in place, the last one takes
them off, and the ones between change nothing.
"""

from __future__ import annotations

import threading

__all__ = ["Users"]


class Users:
    """How many users want it on; :meth:`add` and :meth:`remove` say when to switch."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @property
    def any(self) -> bool:
        """Whether anyone wants it on."""
        return self._count > 0

    def add(self) -> bool:
        """One more user; True for the first (put it in place now)."""
        with self._lock:
            self._count += 1
            return self._count == 1

    def remove(self) -> bool:
        """One user fewer; True when that was the last (take it off now). A remove without
        a user is ignored."""
        with self._lock:
            if self._count == 0:
                return False
            self._count -= 1
            return self._count == 0

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it at the fork)."""
        self._lock = threading.Lock()
