"""Which components an installed guard gets; each issue's part attaches itself here."""

from __future__ import annotations

from runtime_guard.guard import Guard

__all__ = ["attach_components"]


def attach_components(guard: Guard) -> None:
    """Attach the guard's standard components according to ``guard.config``."""
    from runtime_guard.timeline import Timeline

    guard.add_component(Timeline(guard))
    _attach_shedding_and_relief(guard)
    _attach_tracking(guard)
    _attach_leaks(guard)
    _attach_recycling(guard)


def _attach_shedding_and_relief(guard: Guard) -> None:
    # Shedding before relief: what shedding frees (caches, features) is then collected
    # and trimmed back to the OS by the relief that follows in the same sample.
    from runtime_guard.pressure import Pressure
    from runtime_guard.relief import ReliefComponent
    from runtime_guard.shedding import SheddingComponent, set_emergency

    config = guard.config
    guard.add_component(SheddingComponent())
    if config.emergency:
        set_emergency(guard, True)
    if config.relief:
        guard.add_component(
            ReliefComponent(Pressure.parse(config.relief_at), config.relief_cooldown)
        )


def _attach_tracking(guard: Guard) -> None:
    from runtime_guard.tracking import TrackingComponent

    guard.add_component(TrackingComponent(track_clients=guard.config.track_clients))


def _attach_recycling(guard: Guard) -> None:
    # After the leak detector: a recycle decided on a sample reports the diagnosis that
    # sample finished.
    from runtime_guard.recycling import RecyclePolicy

    guard.add_component(RecyclePolicy(guard.config))


def _attach_leaks(guard: Guard) -> None:
    from runtime_guard.leaks import LeakDetector

    if guard.config.leak_detection:
        guard.add_component(LeakDetector(guard.config))
