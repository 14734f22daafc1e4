"""Cost of tracking: a tracked construction beside the same untracked one, in one run.

Prints, per construction: a small class untracked and tracked (kept alive, and dropped at
once so the weak-reference callback is included), a real client (``requests.Session``),
an untracked class while another is tracked, and the import of fresh unrelated modules
with and without the import hook waiting for a module. Target: under 2 us added per
tracked construction; nothing added to untracked classes and unrelated imports.

    python benchmarks/bench_tracking.py
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import tempfile
import time
import timeit
from collections.abc import Callable

from runtime_guard import tracking
from runtime_guard.tracking.clients import watcher

ROUNDS = 7
NUMBER = 20_000


class Plain:
    def __init__(self, value: int) -> None:
        self.value = value

    def close(self) -> None:
        pass


class Other:
    def __init__(self, value: int) -> None:
        self.value = value


def per_call(fn: Callable[[], object], number: int) -> float:
    """Best of ROUNDS, in microseconds of this process's CPU time per call.

    CPU time rather than wall time: the figures stay comparable on a shared machine where
    other processes take the cores in turns.
    """
    best = min(timeit.repeat(fn, number=number, repeat=ROUNDS, timer=time.process_time))
    return best / number * 1e6


def construct_kept(cls: type) -> Callable[[], object]:
    def run() -> object:
        kept = [cls(i) for i in range(100)]
        return kept

    return run


def construct_dropped(cls: type) -> Callable[[], object]:
    def run() -> object:
        for i in range(100):
            cls(i)
        return None

    return run


def header(title: str, base: str, other: str) -> None:
    print(f"{title:<52} {base:>8} {other:>8} {'added':>8} {'ratio':>7}")


def row(label: str, base: float, other: float, per: int = 1) -> None:
    added = (other - base) / per
    print(f"{label:<52} {base / per:8.3f} {other / per:8.3f} {added:+8.3f} {other / base:6.2f}x")


def paired(
    measure: Callable[[], float], cls: type, other: Callable[[], float] | None = None
) -> tuple[float, float]:
    """Best untracked and best tracked figure, measured in alternation round by round so
    that a busy neighbour or a clock change hits both sides alike."""
    untracked, tracked = [], []
    for _ in range(ROUNDS):
        untracked.append(measure())
        tracking.track(cls)
        tracked.append((other or measure)())
        tracking.untrack_all()
        gc.collect()
    return min(untracked), min(tracked)


def once(fn: Callable[[], object], number: int) -> float:
    start = time.process_time()
    for _ in range(number):
        fn()
    return (time.process_time() - start) / number * 1e6


def bench_constructions() -> None:
    import requests

    header("per construction (us)", "untracked", "tracked")
    rounds = NUMBER // 100
    once(construct_kept(Plain), rounds)  # warm-up: allocator, caches
    kept = paired(lambda: once(construct_kept(Plain), rounds), Plain)
    row("small class, kept alive", *kept, per=100)
    dropped = paired(lambda: once(construct_dropped(Plain), rounds), Plain)
    row("small class, dropped at once (incl. collection)", *dropped, per=100)
    other = paired(lambda: once(construct_dropped(Other), rounds), Plain)
    row("untracked class while another is tracked", *other, per=100)
    before = once(construct_dropped(Plain), rounds)
    tracking.track(Plain)
    tracking.untrack_all()
    after = once(construct_dropped(Plain), rounds)
    row("small class after track + untrack (vs before)", before, after, per=100)
    session = paired(lambda: once(lambda: requests.Session().close(), 2000), requests.Session)
    row("requests.Session() + close()", *session)


def make_modules(directory: str, prefix: str, count: int) -> list[str]:
    names = []
    for i in range(count):
        name = f"{prefix}_{i}"
        with open(os.path.join(directory, f"{name}.py"), "w") as f:
            f.write(f"VALUE = {i}\n")
        names.append(name)
    return names


def import_all(names: list[str]) -> float:
    start = time.process_time()
    for name in names:
        importlib.import_module(name)
    return (time.process_time() - start) / len(names) * 1e6


def bench_imports() -> None:
    count = 300
    with tempfile.TemporaryDirectory() as directory:
        sys.path.insert(0, directory)
        try:
            results: dict[str, list[float]] = {"without hook": [], "hook waiting": []}
            for rnd in range(ROUNDS):
                for label, figures in results.items():
                    names = make_modules(directory, f"rg_bench_{label[0]}{rnd}", count)
                    importlib.invalidate_caches()
                    if label == "hook waiting":
                        tracking.track("rg_bench_never_imported.Thing")
                        assert watcher in sys.meta_path
                    figures.append(import_all(names))
                    tracking.untrack_all()
                    for name in names:
                        sys.modules.pop(name, None)
        finally:
            sys.path.remove(directory)
    base, hooked = min(results["without hook"]), min(results["hook waiting"])
    print()
    header("per unrelated import (us)", "no hook", "hook")
    row(f"import of a fresh one-line module ({count} per round)", base, hooked)
    tracking.track("rg_bench_never_imported.Thing")
    lookup = per_call(lambda: watcher.find_spec("json", None), 200_000)
    tracking.untrack_all()
    print(f"{'hook find_spec for an unwatched module':<52} {lookup:8.3f} us")


def main() -> None:
    print(f"python {sys.version.split()[0]}, best of {ROUNDS} rounds, CPU time of this process")
    print()
    bench_constructions()
    bench_imports()


if __name__ == "__main__":
    main()
