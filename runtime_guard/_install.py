"""The process-wide guard: ``install()``, ``uninstall()``, ``get_guard()``.

This module owns the one guard a process runs: it builds it from the options, attaches the
standard components (event log, timeline, shedding, relief, tracking, leak detection,
recycling, container publisher), starts its sampler, restarts the sampler in a forked
child, and stops it before the interpreter finalises. :class:`~runtime_guard.guard.Guard`
itself knows nothing of any of this.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from typing import Any

from runtime_guard import _current, _fork
from runtime_guard._current import get_guard
from runtime_guard.config import Config
from runtime_guard.container import ContainerPublisher
from runtime_guard.events import EventLog
from runtime_guard.guard import Guard
from runtime_guard.leaks import ondemand
from runtime_guard.leaks.detector import LeakDetector
from runtime_guard.looplag import LoopLagComponent
from runtime_guard.pools.component import PoolComponent
from runtime_guard.pressure import Pressure
from runtime_guard.recycling import RecyclePolicy
from runtime_guard.relief import ReliefComponent
from runtime_guard.reports.timeline import Timeline
from runtime_guard.resources.component import ResourceComponent
from runtime_guard.shedding import SheddingComponent
from runtime_guard.stuck import StuckComponent
from runtime_guard.tracking.component import TrackingComponent

__all__ = ["attach_components", "get_guard", "install", "uninstall"]

_log = logging.getLogger("runtime_guard")

_install_lock = threading.Lock()


def attach_components(guard: Guard) -> None:
    """Attach the standard components to ``guard`` according to ``guard.config``.

    Shedding comes before relief: what shedding frees (caches, features) is then collected
    and trimmed back to the OS by the relief that follows in the same sample. The event log
    comes first, so it hears every signal; the container publisher last, so it publishes
    what the others made of the sample.
    """
    config = guard.config
    guard.add_component(EventLog(guard))
    guard.add_component(Timeline(guard))
    shedding = SheddingComponent(clock=guard.clock)
    guard.add_component(shedding)
    if config.emergency:
        shedding.set_emergency(guard, True)
    if config.relief:
        guard.add_component(
            ReliefComponent(Pressure.parse(config.relief_at), config.relief_cooldown, guard.clock)
        )
    guard.add_component(TrackingComponent(track_clients=config.track_clients))
    if config.track_resources:
        guard.add_component(PoolComponent(config.checkout_warn_after, config.pool_exhausted_after))
    guard.add_component(
        ResourceComponent(
            config.resource_window,
            config.resource_min_growth,
            record_sites=config.track_resources,
        )
    )
    guard.add_component(StuckComponent())
    lag_level = config.loop_lag_pressure
    guard.add_component(
        LoopLagComponent(
            config.loop_lag_threshold,
            None if lag_level is None else Pressure.parse(lag_level),
            discover=config.track_resources,
        )
    )
    if config.leak_detection:
        guard.add_component(LeakDetector(config, guard.clock))
    # After the leak detector (a recycle decided on a sample reports the diagnosis that
    # sample finished), before the publisher (a recycle decided is published with it).
    guard.add_component(RecyclePolicy(config, clock=guard.clock))
    guard.add_component(ContainerPublisher())


def install(**options: Any) -> Guard:
    """Install the process-wide guard and start its sampler; returns the existing one if any.

    Options are validated first (keywords over ``RUNTIME_GUARD_*`` variables); a bad one
    raises :class:`~runtime_guard.ConfigError`. Calling again with other options keeps the
    running guard and logs that the new options were ignored.
    """
    config = Config.from_options(options)
    with _install_lock:
        installed = _current.guard
        if installed is not None:
            if options and config != installed.config:
                _log.warning(
                    "runtime_guard: already installed; options %s ignored (uninstall() first)",
                    sorted(options),
                )
            return installed
        guard = Guard(config)
        try:
            attach_components(guard)
            guard.start()
        except BaseException:
            guard.stop()
            raise
        _current.guard = guard
        if "uwsgi" in sys.modules:  # inside uWSGI: name the options the guard lacks, recycle
            from runtime_guard.integrations.uwsgi import at_install

            at_install(guard)
    ondemand.install_signal(guard)
    return guard


def uninstall() -> None:
    """Stop the process-wide guard and undo everything it did; safe to call when none is."""
    with _install_lock:
        guard, _current.guard = _current.guard, None
    if guard is not None:
        ondemand.uninstall_signal()
        guard.stop()


def _after_fork_in_child() -> None:
    global _install_lock
    _install_lock = threading.Lock()
    if _current.guard is not None:
        _current.guard.after_fork_in_child()


def _at_exit() -> None:
    # Stopping before interpreter finalisation means the sampler never runs while modules
    # are being torn down.
    guard = _current.guard
    if guard is not None:
        ondemand.uninstall_signal()
        guard.stop_threads(0.5)


# Registered last of the fork hooks: the registries the guard's components use are reset in
# the child before the guard restarts its sampler there.
_fork.after_fork_in_child(_after_fork_in_child)
atexit.register(_at_exit)
