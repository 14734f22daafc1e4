"""Garbage-collector figures: collections from ``gc.get_stats``, pause time from callbacks."""

from __future__ import annotations

import gc
import time
from typing import Any

__all__ = ["GcStats"]


class GcStats:
    """Sums the time spent inside collections; installed into ``gc.callbacks``."""

    def __init__(self) -> None:
        self.pause = 0.0
        """Seconds spent in garbage collection since :meth:`install`."""
        self.last_pause = 0.0
        """Duration of the most recent collection in seconds."""
        self._started = 0.0
        self.collections = sum(stat["collections"] for stat in gc.get_stats())
        """Collections run so far in all generations; counted by the callback because
        ``gc.get_stats()`` builds three dicts per call, a fifth of a whole sample."""

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.collections += 1
        if self._started:
            self.last_pause = time.perf_counter() - self._started
            self.pause += self.last_pause
            self._started = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        while self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def ensure_installed(self) -> bool:
        """Put the callback back if the host replaced ``gc.callbacks``; True when it had to."""
        if self._callback in gc.callbacks:
            return False
        gc.callbacks.append(self._callback)
        return True
