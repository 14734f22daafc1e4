import itertools

import numpy as np
import pytest
from shop import media

ids = itertools.count(90_000)
FRAME = np.ones((64, 64))


@pytest.mark.no_leaks
def test_brightness_temporary_buffer():
    assert media.brightness(FRAME) == 1.0


@pytest.mark.no_leaks
def test_render_report_scratch_buffer():
    assert media.render_report(1_000) == 12_000


@pytest.mark.no_leaks
def test_export_streamed():
    assert media.export_report_streamed(next(ids)) > 250_000


@pytest.mark.no_leaks
def test_numpy_frame_history():
    assert media.brightness_tracked(FRAME) == 1.0


@pytest.mark.no_leaks
def test_large_export_kept():
    assert media.export_report(next(ids)) > 250_000
