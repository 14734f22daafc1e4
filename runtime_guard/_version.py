"""The package's version: the one place it is written (setup.cfg and the CLI read it)."""

__version__ = "0.2.0"
