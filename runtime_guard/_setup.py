"""Which components an installed guard gets; each issue's part attaches itself here."""

from __future__ import annotations

from runtime_guard.guard import Guard

__all__ = ["attach_components"]


def attach_components(guard: Guard) -> None:
    """Attach the guard's standard components according to ``guard.config``."""
    from runtime_guard.timeline import Timeline

    guard.add_component(Timeline(guard))
