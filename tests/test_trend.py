"""The robust trend: Theil-Sen's slope is the median of the pairwise slopes."""

from __future__ import annotations

import itertools
import statistics

from hypothesis import given
from hypothesis import strategies as st

from runtime_guard._trend import theil_sen

_POINT = st.tuples(
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
)


@given(st.lists(_POINT, max_size=12))
def test_the_slope_is_statistics_median_of_the_pairwise_slopes(
    points: list[tuple[float, float]],
) -> None:
    """Any points, odd or even counts of slopes, ties in x skipped: statistics.median's value."""
    slopes = [
        (y2 - y1) / (x2 - x1)
        for (x1, y1), (x2, y2) in itertools.combinations(points, 2)
        if x2 != x1
    ]
    assert theil_sen(points) == (statistics.median(slopes) if slopes else 0.0)


def test_one_outlier_in_five_leaves_the_slope_alone() -> None:
    """A spike in a steady rise does not move the trend."""
    points = [(0.0, 0.0), (1.0, 2.0), (2.0, 400.0), (3.0, 6.0), (4.0, 8.0)]
    assert theil_sen(points) == 2.0
