"""Image and report buffers: numpy arrays and large byte strings."""

from __future__ import annotations

import numpy as np

_frame = np.zeros((64, 64), dtype=np.float64)
_history: list[np.ndarray] = []


def brightness(frame: np.ndarray) -> float:
    """Normalises a frame in a temporary 8 MB working buffer, freed on return."""
    work = np.empty((1024, 1024), dtype=np.float64)
    work[:64, :64] = frame
    return float(work[:64, :64].mean())


def brightness_tracked(frame: np.ndarray) -> float:
    """Keeps a copy of every frame (32 KB) for a trend chart that nobody trims."""
    _history.append(frame.copy())  # LEAK: numpy_frame_history
    return float(frame.mean())


_scratch = bytearray(512 * 1024)


def render_report(rows: int) -> int:
    """Fills a preallocated scratch buffer: the same 512 KB every call."""
    view = memoryview(_scratch)
    line = b"row,0000,ok\n"
    for n in range(rows):
        view[n * len(line) : (n + 1) * len(line)] = line
    return rows * len(line)


_exports: dict[int, bytes] = {}


def export_report(report_id: int) -> int:
    """Renders a 300 KB export and keeps it by id for a download that may never come."""
    lines = (b"%08d,widget,%06d\n" % (n, report_id % 999_999) for n in range(13_000))
    data = b"".join(lines)  # LEAK: large_export_kept
    _exports[report_id] = data
    return len(data)


def export_report_streamed(report_id: int) -> int:
    """The same export built, measured and dropped."""
    lines = (b"%08d,widget,%06d\n" % (n, report_id % 999_999) for n in range(13_000))
    return len(b"".join(lines))
