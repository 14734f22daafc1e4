"""Upload spooling and per-customer export files."""

from __future__ import annotations

import os
import tempfile

_open_logs: dict[str, object] = {}


def append_export_line(directory: str, customer: str, line: str) -> None:
    """Opens the customer's export file and keeps it open "for the next line", per call."""
    path = os.path.join(directory, f"{customer}.csv")
    handle = open(path, "a")  # LEAK: file_handle_per_call
    handle.write(line + "\n")
    handle.flush()
    _open_logs[f"{customer}-{len(_open_logs)}"] = handle


def append_export_line_closed(directory: str, customer: str, line: str) -> None:
    with open(os.path.join(directory, f"{customer}.csv"), "a") as handle:
        handle.write(line + "\n")


def spool_upload(data: bytes) -> int:
    """Spools an upload through a temporary file that is removed when closed."""
    with tempfile.TemporaryFile() as spool:
        spool.write(data)
        spool.seek(0)
        return len(spool.read())
