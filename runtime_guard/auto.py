"""``import runtime_guard.auto`` installs the guard from ``RUNTIME_GUARD_*`` variables."""

from runtime_guard._install import install

guard = install()
"""The process-wide guard this import installed (or found installed)."""
