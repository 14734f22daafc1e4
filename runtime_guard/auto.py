"""``import runtime_guard.auto`` installs the guard from ``RUNTIME_GUARD_*`` variables."""

from runtime_guard.guard import install

guard = install()
"""The process-wide guard this import installed (or found installed)."""
