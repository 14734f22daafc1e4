"""The application objects a leak's holder is searched from, besides the user's modules.

The middleware registers the app it wraps (a Flask, Django or FastAPI application object):
an app made by a factory is held by the server alone, and a cache kept on it
(``app.extensions``, ``app.state``) is reachable from no module of the user's code. Only a
few objects are kept, weakly where they allow it; importing this module costs nothing.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["MAX_ROOTS", "forget", "register", "registered"]

MAX_ROOTS = 8
"""Application objects remembered at most (one per middleware, in practice one or two)."""

_lock = threading.Lock()
_roots: list[tuple[str, Any]] = []


def register(obj: Any, name: str = "app", replace: bool = False) -> None:
    """Search for leak holders from ``obj`` too, shown as ``name`` (``app.extensions[...]``).

    With ``replace``, ``obj`` takes the place of what was registered as ``name`` before (the
    framework's application object over the inner app a middleware wraps).
    """
    if obj is None:
        return
    with _lock:
        if any(_deref(known) is obj for _, known in _roots):
            return
        # An app that is gone (made by a factory per test, say) gives its place up.
        _roots[:] = [
            (n, known)
            for n, known in _roots
            if _deref(known) is not None and not (replace and n == name)
        ]
        if len(_roots) >= MAX_ROOTS:
            return
        entry: Any
        try:
            entry = weakref.ref(obj)
        except TypeError:  # not weakly referenceable: an app lives as long as the process
            entry = obj
        label = name if not any(n == name for n, _ in _roots) else f"{name}#{len(_roots) + 1}"
        _roots.append((label, entry))


def forget() -> None:
    """Forget every registered object (for tests: :func:`runtime_guard.testing.reset`)."""
    with _lock:
        _roots.clear()


def registered() -> list[tuple[str, Any]]:
    """``(name, object)`` of the registered objects still alive."""
    with _lock:
        found = [(name, _deref(held)) for name, held in _roots]
    return [(name, obj) for name, obj in found if obj is not None]


def _deref(held: Any) -> Any:
    return held() if isinstance(held, weakref.ref) else held
