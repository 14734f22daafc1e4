"""Package namespaces whose names are imported on first use (PEP 562).

A server imports the guard in every worker and pytest imports it in every session; the
expensive parts (diagnosis, report rendering) are imported only when first asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["attach"]


def attach(
    package: str, homes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose public names are the keys
    of ``homes``, each imported on first use from the submodule named by its value (an empty
    value: the name is itself a submodule)."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if home:
            value = getattr(importlib.import_module(f"{package}.{home}"), name)
        else:
            value = importlib.import_module(f"{package}.{name}")
        # Later lookups find the name in the module's globals and skip this function.
        vars(importlib.import_module(package))[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *homes})

    return __getattr__, __dir__, sorted(homes)
