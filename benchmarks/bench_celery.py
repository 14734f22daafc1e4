"""Cost of the Celery shedding check on every run of a shed task type, beside a baseline.

    python benchmarks/bench_celery.py

A task type listed in ``shed`` runs through a wrapper that reads the guard's pressure before
the task body. Prints nanoseconds per call (best of several interleaved repeats) and the
ratio to the baseline: the bare task function against the wrapped one at OK pressure, and
a whole eager Celery run (``Task.apply``, the tracer a worker uses) of a plain task against
the same run of a shed one. The deferral itself (under pressure) is the publish
``Task.retry`` makes, so it is not timed here.
"""

from __future__ import annotations

import timeit
from typing import Any

from celery import Celery

import runtime_guard
from runtime_guard.integrations.celery import _shed_task
from runtime_guard.pressure import Pressure

NUMBER = 200_000
APPLY_NUMBER = 5_000
REPEAT = 7


def compare(
    title: str, statements: list[tuple[str, str]], namespace: dict[str, Any], number: int
) -> None:
    """Time each statement, best of ``REPEAT``, interleaved; the first is the baseline."""
    timers = [timeit.Timer(statement, globals=namespace) for _, statement in statements]
    best = [float("inf")] * len(timers)
    for _ in range(REPEAT):
        for index, timer in enumerate(timers):
            best[index] = min(best[index], timer.timeit(number) / number * 1e9)
    print(title)
    for index, ((label, _), value) in enumerate(zip(statements, best, strict=True)):
        ratio = "  base" if index == 0 else f"{value / best[0]:5.2f}x"
        print(f"  {label:<44} {value:9.1f} ns  {ratio}")


def main() -> None:
    app = Celery("bench", broker="memory://", backend="cache+memory://")

    @app.task
    def plain(x: int) -> int:
        return x + 1

    @app.task
    def shed(x: int) -> int:
        return x + 1

    bare = shed.run
    _shed_task(shed, Pressure.HIGH, retry_after=30.0, max_deferrals=10)
    guard = runtime_guard.install(interval=60.0)
    assert guard.pressure < Pressure.HIGH, "the benchmark needs OK pressure"
    namespace = {"bare": bare, "wrapped": shed.run, "plain": plain, "shed": shed}
    try:
        compare(
            "task body, bare and through the shedding check (OK pressure):",
            [("bare task function", "bare(1)"), ("shedding wrapper", "wrapped(1)")],
            namespace,
            NUMBER,
        )
        compare(
            "a whole eager Celery run (Task.apply), plain task and shed task:",
            [("plain task", "plain.apply((1,))"), ("shed task", "shed.apply((1,))")],
            namespace,
            APPLY_NUMBER,
        )
    finally:
        runtime_guard.uninstall()


if __name__ == "__main__":
    main()
