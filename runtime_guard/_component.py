"""The seam between the guard's sampler and the parts that act on its samples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime_guard.pressure import Pressure

if TYPE_CHECKING:
    from runtime_guard.guard import Guard
    from runtime_guard.sample import Sample

__all__ = ["Component"]


class Component:
    """A part of the guard driven by the sampler (leak detector, relief, shedding, tracking).

    Hooks run on the thread that took the sample, before any signal is delivered, so a slow
    receiver can never delay them. A hook that raises is logged once and the component is
    switched off; the guard goes on without it.
    """

    name = "component"
    """Short name used in logs and in ``Guard.health()``."""

    pressure_floor = Pressure.OK
    """The least level the guard is at while this component says so (a lagging event loop,
    say); read before each sample, so set it in :meth:`on_sample` for the next one."""

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        """Called after every sample. Keep it cheap: it runs once per interval."""

    def on_pressure(self, guard: Guard, old: Pressure, new: Pressure, sample: Sample) -> None:
        """Called when the pressure level changes, after :meth:`on_sample`."""

    def health(self, guard: Guard) -> dict[str, Any]:
        """Keys merged into ``Guard.health()``; must be JSON-ready."""
        return {}

    def after_fork(self, guard: Guard) -> None:
        """Called in the child after ``fork()``: drop state that belongs to the parent."""

    def close(self, guard: Guard) -> None:
        """Undo everything the component did (patches, callbacks, threads)."""
