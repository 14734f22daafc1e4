"""The guard: one sampler thread, pressure levels, the components it drives, and health.

A :class:`Guard` reads memory through a probe on every interval, folds the reading into a
pressure level, records the sample, runs its components' hooks and queues the signals.
It imports none of its components: they are attached from outside (the process-wide one by
:func:`runtime_guard.install`) and talk to it through its public methods: :meth:`read`,
:attr:`clock`, :attr:`config`, :meth:`send`.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from blinker import NamedSignal

from runtime_guard import _fork, relief, signals
from runtime_guard._component import Component
from runtime_guard._dispatch import Dispatcher
from runtime_guard._gcstats import GcStats
from runtime_guard.config import Config
from runtime_guard.history import History
from runtime_guard.pressure import Pressure, PressureTracker
from runtime_guard.probes import MemoryProbe, Reading, RuntimeProbe
from runtime_guard.sample import Sample

if TYPE_CHECKING:
    from runtime_guard.leaks.report import LeakReport
    from runtime_guard.relief import ReliefResult

__all__ = ["Clock", "Guard", "Probe"]

Clock = Callable[[], float]
"""A monotonic clock in seconds (``time.monotonic``); tests pass a hand-driven one."""

_log = logging.getLogger("runtime_guard")

# Cgroup limits can be raised while a container runs; re-reading them costs a few file
# reads, so it is done on this period rather than on every sample.
_REDISCOVER_SECONDS = 10.0


class Probe(Protocol):
    """What the guard needs from a memory source (see :class:`MemoryProbe`)."""

    limit: int

    @property
    def sources(self) -> dict[str, str]: ...

    def read(self) -> Reading: ...

    def discover(self) -> None: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


class Guard:
    """Watches this process's memory and acts through its components and signals.

    Use :func:`install` for the process-wide guard. A guard constructed directly takes
    samples only when :meth:`sample` is called, until :meth:`start` starts its sampler:
    what deterministic tests and the pytest plugin use.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        probe: Probe | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config if config is not None else Config.from_options({})
        """The validated options."""
        self.clock: Clock = clock or time.monotonic
        """The monotonic clock of samples and of every component's delays and windows."""
        self._probe: Probe = probe or MemoryProbe(
            memory_limit=self.config.memory_limit, process_limit=self.config.process_limit
        )
        self._tracker = PressureTracker(
            self.config.elevated, self.config.high, self.config.critical, self.config.hysteresis
        )
        self._level = Pressure.OK
        self.history = History(self.config.history_size)
        """Recent samples, oldest first; bounded by ``history_size``."""
        # Held files close when the guard is collected, not at stop(): a host thread may
        # still call sample() on a guard another thread just uninstalled.
        # At exit the OS closes them; closing earlier would pull them from under the sampler.
        weakref.finalize(self, self._probe.close).atexit = False
        self._runtime = RuntimeProbe()
        weakref.finalize(self, self._runtime.close).atexit = False
        self._gc = GcStats()
        self._gc.install()
        self._dispatcher = Dispatcher(self)
        self._components: list[Component] = []
        # The components whose on_sample does something, with the bound hook: built once
        # per change of the list, not per sample (a dozen getattr calls and no-op calls
        # cost a fifth of a sample; measured in benchmarks/bench_sampling.py).
        self._samplers: tuple[tuple[Component, Callable[[Guard, Sample], None]], ...] | None
        self._samplers = None
        # Components by name: several components look one another up on every sample.
        self._by_name: dict[str, Component] = {}
        self._failed_components: set[str] = set()
        self._init_runtime_state()

    def _init_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = self.clock()
        self._discovered = self._started
        self._sample_failures = 0
        self._sample_error = ""
        self._closed = False
        self._round_at = self._started

    # -- components -------------------------------------------------------------------

    def add_component(self, component: Component) -> None:
        """Attach a part that the sampler drives (see :class:`~runtime_guard.Component`).

        A component of the same name attached earlier is closed and replaced.
        """
        old = self.component(component.name)
        if old is not None:
            self.remove_component(old)
        self._components.append(component)
        self._by_name[component.name] = component
        self._samplers = None

    def remove_component(self, component: Component) -> None:
        """Close ``component`` and detach it; nothing happens if it is not attached."""
        if component in self._components:
            self._detach(component)
            self._call(component, "close")

    def component(self, name: str) -> Component | None:
        """Return the attached component called ``name``, if any."""
        return self._by_name.get(name)

    def _detach(self, component: Component) -> None:
        self._components.remove(component)
        if self._by_name.get(component.name) is component:
            del self._by_name[component.name]
        self._samplers = None

    def _call(self, component: Component, hook: str, *args: Any) -> Any:
        try:
            return getattr(component, hook)(self, *args)
        except Exception:
            self._switch_off(component, hook)
            return None

    def _switch_off(self, component: Component, hook: str) -> None:
        """Log a component's failure once and detach it; the guard goes on without it."""
        if component.name not in self._failed_components:
            self._failed_components.add(component.name)
            _log.exception(
                "runtime_guard: component %r failed in %s; it is switched off",
                component.name,
                hook,
            )
        if component in self._components:
            self._detach(component)

    # -- sampling ---------------------------------------------------------------------

    @property
    def pressure(self) -> Pressure:
        """The current pressure level."""
        return self._level

    @property
    def limit(self) -> int:
        """The memory limit in bytes that usage is measured against."""
        return self._probe.limit

    @property
    def sources(self) -> dict[str, str]:
        """Where each figure is read from (``rss``, ``usage``, ``limit``), for health."""
        return dict(self._probe.sources)

    def read(self) -> Reading:
        """One memory reading now, without recording a sample or running any component."""
        return self._probe.read()

    def sample(self) -> Sample:
        """Take one reading now, record it, run the components and queue the signals."""
        reading = self._probe.read()
        runtime = self._runtime.read()
        now = self.clock()
        with self._lock:
            old = self._level
            # A component may hold the level up for a reason other than memory (a lagging
            # event loop); it says so through its pressure_floor after the previous sample.
            new = self._level = max(self._tracker.update(reading.fraction), self._floor())
            sample = Sample(
                monotonic=now,
                wall=time.time(),
                rss=reading.rss,
                usage=reading.usage,
                limit=reading.limit,
                usage_fraction=reading.fraction,
                heap_blocks=sys.getallocatedblocks(),
                gc_counts=gc.get_count(),
                gc_collections=self._gc.collections,
                gc_pause=self._gc.pause,
                threads=runtime.threads,
                pressure=new,
                tasks=runtime.tasks,
                fds=runtime.fds,
                loop_lag=runtime.loop_lag,
            )
            self.history.append(sample)
        samplers = self._samplers
        if samplers is None:
            samplers = self._samplers = tuple(
                (component, component.on_sample)
                for component in self._components
                if type(component).on_sample is not Component.on_sample
                or "on_sample" in vars(component)
            )
        for component, on_sample in samplers:
            try:
                on_sample(self, sample)
            except Exception:
                self._switch_off(component, "on_sample")
        if new != old:
            for component in list(self._components):
                self._call(component, "on_pressure", old, new, sample)
        self._dispatcher.send(signals.sample_taken, sample=sample)
        if new != old:
            self._dispatcher.send(signals.pressure_changed, old=old, new=new, sample=sample)
        return sample

    def _floor(self) -> Pressure:
        floor = Pressure.OK
        for component in self._components:
            floor = max(floor, component.pressure_floor)
        return floor

    # -- actions that components provide ---------------------------------------------

    def check_leaks(self) -> LeakReport | None:
        """Judge the recent history for a growth leak now; a ``LeakReport`` or ``None``
        (also ``None`` when leak detection is off)."""
        component = self.component("leaks")
        report = None if component is None else self._call(component, "check")
        return report

    def diagnose(
        self, reason: str = "on demand", timeout: float | None = None
    ) -> LeakReport | None:
        """Diagnose the process's growth now and write the report (``report_dir``, the log).

        Traces for a diagnosis window on the sampler thread whatever the duty cycle, and
        waits for it (up to ``timeout`` seconds); the report names the top lines, their
        holder and the routes. ``reason`` says who asked ("SIGUSR2", "recycle: ..."). None
        when leak detection is off or no sample was taken.
        """
        component = self.component("leaks")
        diagnose = getattr(component, "diagnose", None)
        if diagnose is None:
            return None
        try:
            return diagnose(self, reason, timeout)  # type: ignore[no-any-return]
        except Exception:
            _log.exception("runtime_guard: diagnose(%r) failed", reason)
            return None

    def relieve(self) -> ReliefResult:
        """Run relief now (full GC, then ``malloc_trim`` on glibc); returns a ``ReliefResult``."""
        return relief.relieve(self)

    def set_emergency(self, on: bool) -> None:
        """Shed (or restore) every sheddable feature at once, as an operator's switch.

        Without a shedding component (a bare ``Guard``) there is nothing to shed: logged.
        """
        component = self.component("shedding")
        switch = getattr(component, "set_emergency", None)
        if switch is None:
            _log.warning("runtime_guard: set_emergency(%s): no shedding component attached", on)
            return
        switch(self, on)

    def send(self, signal: NamedSignal, **payload: Any) -> None:
        """Queue ``signal`` for delivery with this guard as sender (never raises)."""
        self._dispatcher.send(signal, **payload)

    def flush_signals(self, timeout: float = 5.0) -> bool:
        """Wait until queued signals are delivered; for tests and orderly shutdown."""
        self._dispatcher.start()
        return self._dispatcher.flush(timeout)

    def _run(self) -> None:
        interval = self.config.interval
        clock = self.clock
        next_at = clock()
        while not self._stop_event.is_set():
            try:
                # A fork in another thread waits for the round: what the round imports on
                # first use is never left half-imported and locked in the child.
                with _fork.held_off():
                    if self.clock() - self._discovered >= _REDISCOVER_SECONDS:
                        self._discovered = self.clock()
                        self._probe.discover()
                    self._gc.ensure_installed()
                    self.sample()
                self._sample_failures = 0
            except Exception as exc:
                self._sample_failures += 1
                self._sample_error = f"no memory reading: {exc!r}"
                if self._sample_failures == 1:
                    _log.exception("runtime_guard: sample failed; retrying every interval")
            next_at += interval
            now = clock()
            self._round_at = now
            delay = next_at - now
            # Fell behind (suspended, slow host, clock jumped ahead): skip, never catch up
            # in a burst. More than one interval ahead means the clock went back: waiting
            # it out would stall the sampler for as long as the jump.
            if delay < 0 or delay > interval:
                next_at = now
                delay = interval
            self._stop_event.wait(delay)

    def sampler_status(self) -> tuple[str, float]:
        """``(state, seconds since the sampler last ended a round)`` for liveness checks.

        ``state`` is ``"running"``, ``"stopped"`` (never started, or stopped) or ``"dead"``
        (its thread ended by itself). A round that fails to read memory still counts: the
        sampler is alive, only blind. Reads two attributes; takes no lock.
        """
        thread = self._thread
        if thread is None or self._stop_event.is_set():
            state = "stopped"
        else:
            state = "running" if thread.is_alive() else "dead"
        return state, self.clock() - self._round_at

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the sampler and signal threads (idempotent)."""
        self._dispatcher.start()
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop_event.clear()
        self._round_at = self.clock()
        self._thread = threading.Thread(target=self._run, name="runtime-guard", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the threads and undo what the guard and its components did (idempotent)."""
        self.stop_threads(timeout)
        self._thread = None
        if self._closed:
            return
        self._closed = True
        for component in reversed(list(self._components)):
            self._call(component, "close")
        self._components.clear()
        self._by_name.clear()
        self._samplers = None
        self._gc.uninstall()

    def stop_threads(self, timeout: float = 2.0) -> None:
        """Stop the sampler and signal threads only, leaving components as they are; for
        the end of the process, when undoing patches would be wasted work, or before a
        process forks without Python's fork hooks."""
        self._stop_event.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._dispatcher.stop(timeout)

    def after_fork_in_child(self) -> None:
        """Reset in a forked child: no history, no threads of the parent, files reopened;
        the sampler restarts if it ran. The process-wide guard gets this call by itself."""
        was_running = self._thread is not None
        self._init_runtime_state()
        self._dispatcher.after_fork()
        self.history.clear()
        self._tracker.level = self._level = Pressure.OK
        self._runtime.reopen()
        self._probe.reopen()
        for component in list(self._components):
            self._call(component, "after_fork")
        if was_running:
            self.start()

    # -- reporting --------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Return a JSON-ready summary shaped for a ``/health`` endpoint.

        Never raises: with no readable memory source the status is ``"unknown"``.
        """
        latest = self.history.latest()
        if latest is None:
            try:
                latest = self.sample()
            except Exception as exc:
                return {"status": "unknown", "error": f"no memory reading: {exc}"}
        level = self._level
        data: dict[str, Any] = {
            "status": "ok",
            "pressure": level.name.lower(),
            "usage_bytes": latest.usage,
            "limit_bytes": latest.limit,
            "usage_fraction": round(latest.usage_fraction, 4),
            "rss_bytes": latest.rss,
            "process_limit_bytes": self.config.process_limit,
            "sources": self.sources,
            "uptime_seconds": round(self.clock() - self._started, 3),
            "samples": len(self.history),
            "heap_blocks": latest.heap_blocks,
            "threads": latest.threads,
            "gc": {
                "collections": latest.gc_collections,
                "pause_seconds": round(latest.gc_pause, 6),
            },
            "shed_features": [],
            "suspected_leaks": [],
            "unreleased_objects": {},
        }
        for component in list(self._components):
            extra = self._call(component, "health")
            if isinstance(extra, Mapping):
                data.update(extra)
        if self._sample_failures:
            # The figures above are the last good ones; calling them current would hide
            # that the guard is blind until the source answers again.
            data["status"] = "unknown"
            data["error"] = self._sample_error
        elif level >= Pressure.CRITICAL:
            data["status"] = "critical"
        elif level >= Pressure.HIGH or data["shed_features"] or data["suspected_leaks"]:
            data["status"] = "degraded"
        return data

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"<Guard {state} pressure={self.pressure.name} limit={self.limit}>"
