"""The guard's own exception types, apart so that every module can raise them."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad option: the message names the option (or variable), the value and the form."""
