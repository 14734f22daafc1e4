"""Robust growth trends: the judgement shared by the leak detector and the object tracker."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

__all__ = ["median", "sustained_growth", "theil_sen", "window_minima"]


def theil_sen(points: Sequence[tuple[float, float]]) -> float:
    """Return the Theil-Sen slope of ``(x, y)`` points: the median of pairwise slopes.

    Robust to a third of the points being outliers (a burst, a one-off spike), unlike a
    least-squares fit. Quadratic in the number of points, so callers pass window baselines
    (tens of points), never raw samples.
    """
    slopes = [
        (y2 - y1) / (x2 - x1)
        for i, (x1, y1) in enumerate(points)
        for x2, y2 in points[i + 1 :]
        if x2 != x1
    ]
    return median(slopes) if slopes else 0.0


def median(values: Sequence[float]) -> float:
    """statistics.median's rule, written out: importing statistics (fractions, decimal)
    cost every worker 5 ms at start-up for this one function."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def window_minima(
    points: Sequence[tuple[float, float]], window: float
) -> list[tuple[float, float]]:
    """Split ``(t, value)`` points into consecutive windows of ``window`` seconds.

    Returns ``(window end time, minimum value)`` per complete window: the floor a value
    returns to after each GC, which temporary allocations cannot raise.
    """
    if not points:
        return []
    out: list[tuple[float, float]] = []
    start = points[0][0]
    low: float | None = None
    for t, value in points:
        while t >= start + window:
            if low is not None:
                out.append((start + window, low))
            start += window
            low = None
        low = value if low is None else min(low, value)
    return out


def sustained_growth(values: Sequence[float], n: int, min_step: float = 0.0) -> bool:
    """True when each of the last ``n`` values rose more than ``min_step`` over the one before.

    CPython's ``-R`` rule: growth in every measured round, not just on average.
    """
    if n < 1 or len(values) < n + 1:
        return False
    tail = values[-(n + 1) :]
    return all(b - a > min_step for a, b in itertools.pairwise(tail))
