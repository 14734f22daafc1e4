"""How much a holder keeps alive: pympler's deep size, bounded, sampled for big containers.

``pympler.asizeof`` follows every reference below an object and counts each object once,
so it is exact, and slow on a big container (a Python call per object). A holder of a few
hundred entries is sized whole; a bigger one by its entries in two nested random samples:
the second sample's extra size over the first is what one more entry costs, the rest of the
first sample is what its entries share (a session's common pool, a template's class), and
the estimate is the container's own size, plus what is shared once, plus every entry at
its marginal cost. Entries that are functions count what their closures keep, since that is
what a registry of callbacks retains (pympler sizes a function as code).
"""

from __future__ import annotations

import collections
import importlib.abc
import importlib.machinery
import random
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["RetainedSize", "retained_size"]

# Entries sized first, to learn what one costs; then at most this many in the two samples.
_PROBE = 8
_MAX_SAMPLE = 128


@dataclass
class RetainedSize:
    """The deep size of a holder."""

    bytes: int
    """Bytes the holder and everything below it keep alive (estimated when sampled)."""
    entries: int | None
    """Entries of the holder (``len()``), when it is a container."""
    sampled: int
    """Entries sized to estimate the whole; 0 when it was sized whole."""
    seconds: float
    """Seconds the sizing took."""


class _HiddenHere(importlib.abc.MetaPathFinder):
    """Makes ``names`` unimportable on one thread; every other thread imports as usual."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.thread = threading.get_ident()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.names and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"{fullname} hidden while the guard imports pympler")
        return None


@contextmanager
def _hidden(names: frozenset[str]) -> Iterator[None]:
    finder = _HiddenHere(names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def _asizeof() -> types.ModuleType:
    """pympler's ``asizeof`` module, imported without NumPy unless the process has it.

    Importing ``pympler.asizeof`` imports NumPy when it is installed, to size its arrays:
    measured, 14 MiB of RSS in a worker, against 1.5 MiB without. The first holder sizing
    comes when a worker's memory is closest to its limit; a process that never imported
    NumPy holds no array to size, so pympler goes without it. NumPy is hidden from this
    thread alone: a request importing it meanwhile on another thread gets it as usual.
    """
    if "pympler.asizeof" in sys.modules or "numpy" in sys.modules:
        from pympler import asizeof
    else:
        with _hidden(frozenset({"numpy"})):
            from pympler import asizeof
    return asizeof


def _entries(holder: object) -> list[object] | None:
    """The holder's entries, a dict's key and value together (as a pair)."""
    cls = type(holder)
    if issubclass(cls, dict):
        return list(dict.items(holder))  # type: ignore[arg-type]
    if issubclass(cls, (list, tuple, set, frozenset, collections.deque)):
        items: list[object] = list(holder)  # type: ignore[call-overload]
        return items
    return None


def _kept(item: object) -> list[object]:
    """What an entry keeps: a pair's two halves; a function's closure contents, not its
    code (pympler sizes a function as code)."""
    if type(item) is tuple and len(item) == 2:
        return [*_kept(item[0]), *_kept(item[1])]
    if type(item) is types.FunctionType:
        kept: list[object] = [item]
        for cell in item.__closure__ or ():
            try:
                kept.append(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
        return kept
    return [item]


def retained_size(
    holder: object,
    *,
    above: Sequence[object] = (),
    seconds: float = 0.3,
    pause: Callable[[], None] | None = None,
    rng: random.Random | None = None,
) -> RetainedSize | None:
    """The deep size of ``holder``, within about ``seconds``; None when pympler is missing
    or the sizing failed.

    ``above`` are the objects on the way to the holder (its root, its owner): never
    counted, so an entry that refers back up (a tree node's ``parent``) does not size the
    whole tree again. ``pause`` is called between sample batches (by default a sleep of a
    millisecond, which lets other threads take the GIL).
    """
    try:
        asizeof = _asizeof()
    except ImportError:
        return None
    begun = time.perf_counter()
    pause = pause or (lambda: time.sleep(0.001))

    def measure(items: Sequence[object]) -> int:
        sizer = asizeof.Asizer()
        sizer.exclude_objs(holder, *above)
        parts = [part for item in items for part in _kept(item)]
        return int(sizer.asizeof(*parts))

    try:
        entries = _entries(holder)
        if entries is None:
            from runtime_guard.diagnosis.holders import entries_of

            sizer = asizeof.Asizer()
            sizer.exclude_objs(*above)
            size = sizer.asizeof(*_kept(holder))
            return RetainedSize(int(size), entries_of(holder), 0, time.perf_counter() - begun)
        own = int(asizeof.flatsize(holder))
        count = len(entries)
        rng = rng or random.Random()
        rng.shuffle(probe_order := list(range(count)))
        probe = [entries[i] for i in probe_order[:_PROBE]]
        probed = measure(probe)
        each = (time.perf_counter() - begun) / max(len(probe), 1)
        if count <= _PROBE or each * count <= seconds:
            pause()
            size = own + measure(entries)
            return RetainedSize(size, count, 0, time.perf_counter() - begun)
        # Two nested samples: the larger one's extra over the smaller is what one more
        # entry costs; what the smaller holds beyond that is shared by all entries.
        large = max(2 * _PROBE, min(_MAX_SAMPLE, int(seconds / max(each, 1e-9) / 2), count))
        chosen = [entries[i] for i in probe_order[:large]]
        pause()
        both = measure(chosen)
        per_entry = max((both - probed) / (len(chosen) - len(probe)), 0.0)
        shared = max(probed - len(probe) * per_entry, 0.0)
        estimate = own + shared + per_entry * count
        return RetainedSize(int(estimate), count, len(chosen), time.perf_counter() - begun)
    except Exception:  # an object pympler cannot size must not fail the report
        return None
