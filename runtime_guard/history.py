"""The bounded record of recent samples."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from runtime_guard.sample import Sample

__all__ = ["History"]


class History:
    """A ring buffer of samples: the oldest drop out, so the guard's memory stays fixed.

    Appends come from the sampler thread; readers get a snapshot with :meth:`snapshot`
    (a ``deque`` append is atomic, and copying it under the GIL is safe).
    """

    def __init__(self, size: int) -> None:
        self._samples: deque[Sample] = deque(maxlen=size)

    @property
    def maxlen(self) -> int:
        """How many samples are kept at most."""
        return self._samples.maxlen or 0

    def append(self, sample: Sample) -> None:
        self._samples.append(sample)

    def clear(self) -> None:
        self._samples.clear()

    def snapshot(self) -> list[Sample]:
        """Return the samples, oldest first, as a list the caller owns."""
        while True:
            try:
                return list(self._samples)
            except RuntimeError:  # mutated by the sampler while copying; try again
                continue

    def latest(self) -> Sample | None:
        try:
            return self._samples[-1]
        except IndexError:
            return None

    def since(self, monotonic: float) -> list[Sample]:
        """Return the samples taken at or after ``monotonic``."""
        return [s for s in self.snapshot() if s.monotonic >= monotonic]

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.snapshot())
