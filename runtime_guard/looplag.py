"""Event-loop lag: how late a periodic callback runs on each asyncio loop, and what blocked it.

Each watched loop runs a timer callback every :data:`PERIOD` seconds that notes how late it
ran, the way @fastify/under-pressure measures ``eventLoopDelay``: a callback that blocks
the loop (a ``time.sleep`` or a CPU-bound loop in an ``async def`` handler) delays it by as
long as it blocks. A watchdog thread, running only while some loop is watched, sees a loop
whose timer is overdue by ``loop_lag_threshold`` while it is still blocked and takes the
stack of the loop's thread then: the line that blocks it. In asyncio's debug mode the slow
callback asyncio itself logs is named as well.

Loops are watched from their first ``create_task`` while the guard records task creations
(:mod:`runtime_guard.resources.creation`), from the first task in asyncio's registry of
tasks at a sample (uvloop's loops, whose ``create_task`` cannot be hooked), or explicitly
with :func:`watch`.
The lag is a figure of every sample (``Sample.loop_lag``), a health field, and with
``loop_lag_pressure`` a pressure input: while it stays above its threshold the guard's
level is at least that level, so shedding and limiters relieve the loop too.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime_guard import _fork, _frames, _stacks, signals
from runtime_guard._component import Component
from runtime_guard._units import format_duration
from runtime_guard.pressure import Pressure
from runtime_guard.resources.creation import CreationHooks, default_hooks
from runtime_guard.tracking.sites import format_frame

if TYPE_CHECKING:
    from runtime_guard.guard import Guard
    from runtime_guard.sample import Sample

__all__ = ["PERIOD", "Block", "LoopMonitor", "default_monitor", "watch"]

_log = logging.getLogger("runtime_guard")

PERIOD = 0.1
"""Seconds between the timer callbacks on a watched loop (each costs a few microseconds)."""

QUIET_SAMPLES = 10
"""Samples with the lag under its threshold after which a lag episode ends."""

DISCOVER_EVERY = 10
"""Samples between looks for loops the hooks did not see, once one loop is watched."""

DEFER_SAMPLES = 3
"""Samples ``loop_blocked`` may wait for a block caught with its stack (see above)."""

# asyncio's debug mode logs each callback slower than loop.slow_callback_duration so.
_SLOW_CALLBACK = "Executing %s took %.3f seconds"
_MAX_SLOW = 64


@dataclass
class Block:
    """One time a loop was late by more than the threshold."""

    lag: float
    """Seconds late (while still blocked: so far)."""
    callback: str | None = None
    """What blocked it: the slow callback asyncio's debug mode named, else the innermost
    line of the application's own code on the loop's thread when caught blocking."""
    stack: list[str] = field(default_factory=list)
    """The loop thread's stack when caught blocking, innermost last (empty when the block
    ended before the watchdog looked)."""
    wall: float = field(default_factory=time.time)
    """When it was seen."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "lag": round(self.lag, 4),
            "callback": self.callback,
            "stack": list(self.stack),
            "wall": round(self.wall, 3),
        }


class _Watched:
    __slots__ = ("block", "expected", "ident", "loop", "paused")

    def __init__(self, loop: Any) -> None:
        self.loop = weakref.ref(loop)
        self.ident: int | None = None
        self.expected: float | None = None
        self.paused = False
        self.block: Block | None = None


def _innermost_user_line(frame: Any) -> str | None:
    while frame is not None:
        code = frame.f_code
        if _frames.is_user(code.co_filename):
            return format_frame(code.co_filename, frame.f_lineno or 0, code.co_name)
        frame = frame.f_back
    return None


class LoopMonitor:
    """Measures the lag of every watched loop; one per process (:data:`default_monitor`)."""

    def __init__(self, period: float = PERIOD, threshold: float = 0.5) -> None:
        self.period = period
        """Seconds between timer callbacks."""
        self.threshold = threshold
        """Seconds late from which a block is caught with its stack."""
        self.blocks: deque[Block] = deque(maxlen=20)
        """The last blocks seen, newest last."""
        self.seen = 0
        """Blocks seen so far (the deque keeps the last ones)."""
        self._watched: dict[int, _Watched] = {}
        self._worst: float | None = None
        self._slow: dict[int, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._filter = _SlowCallbackFilter(self._slow)
        self._users = 0

    # -- watching ----------------------------------------------------------------------------

    def watch(self, loop: Any) -> None:
        """Start measuring ``loop``'s lag (idempotent; the loop need not run yet)."""
        key = id(loop)
        with self._lock:
            if key in self._watched:
                return
            state = self._watched[key] = _Watched(loop)
            weakref.finalize(loop, self._watched.pop, key, None)
        self._ensure_watchdog()
        try:
            loop.call_soon_threadsafe(self._tick, state)
        except RuntimeError:  # closed already
            self._watched.pop(key, None)

    def discover(self) -> None:
        """Watch the loop of the first task in asyncio's registry of tasks, if it is not yet:
        the way to reach loops whose ``create_task`` the guard cannot hook (uvloop)."""
        module = sys.modules.get("asyncio.tasks")
        if module is None:
            return
        for name in ("_all_tasks", "_scheduled_tasks"):
            tasks = getattr(module, name, None)
            if tasks is None:
                continue
            try:
                for task in tasks:  # the first one is enough: one peek a sample
                    loop = task.get_loop()
                    if id(loop) not in self._watched and not loop.is_closed():
                        self.watch(loop)
                    break
            except Exception:  # resized by the loop's thread meanwhile: next sample
                continue

    def watching(self) -> int:
        """How many loops are watched."""
        return len(self._watched)

    def _tick(self, state: _Watched) -> None:
        now = time.monotonic()
        loop = state.loop()
        if loop is None or self._watched.get(id(loop)) is not state:  # no longer watched
            return
        if state.ident is None:
            state.ident = threading.get_ident()
        elif state.expected is not None and not state.paused:
            lag = max(now - state.expected, 0.0)
            if self._worst is None or lag > self._worst:
                self._worst = lag
            if lag >= self.threshold:
                self._ended(state, lag)
        state.paused = False
        state.block = None
        state.expected = now + self.period
        loop.call_later(self.period, self._tick, state)

    def _ended(self, state: _Watched, lag: float) -> None:
        block = state.block
        slow = self._slow.pop(state.ident or 0, None)
        if block is None:  # over before the watchdog looked: the lag alone
            block = Block(lag)
            self._add(block)
        block.lag = lag
        if slow is not None:
            block.callback = slow[1]

    # -- the watchdog ------------------------------------------------------------------------

    def _ensure_watchdog(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            logging.getLogger("asyncio").addFilter(self._filter)
            self._thread = threading.Thread(
                target=self._watchdog, name="runtime-guard-looplag", daemon=True
            )
            self._thread.start()

    def _watchdog(self) -> None:
        while not self._stop.wait(self.period):
            if not self._watched:
                with self._lock:  # no loop left: the thread ends; watch() starts another
                    if not self._watched:
                        self._thread = None
                        return
            now = time.monotonic()
            for state in list(self._watched.values()):
                try:
                    self._look(state, now)
                except Exception:  # a loop closed meanwhile: never stop watching the others
                    continue

    def _look(self, state: _Watched, now: float) -> None:
        loop = state.loop()
        if loop is None or state.expected is None or state.ident is None:
            return
        if not loop.is_running():
            state.paused = True  # a stopped loop's next timer is late, not blocked
            return
        late = now - state.expected
        if late < self.threshold or state.block is not None:
            return
        frame = sys._current_frames().get(state.ident)
        block = Block(late, _innermost_user_line(frame), _stacks.stack_of(frame))
        state.block = block
        self._add(block)
        if self._worst is None or late > self._worst:
            self._worst = late

    # -- reading -----------------------------------------------------------------------------

    def take(self) -> float | None:
        """Worst lag since the previous call (a loop blocked now counts as late so far);
        ``None`` while no loop is watched."""
        if not self._watched and self._worst is None:
            return None
        worst, self._worst = self._worst, None
        now = time.monotonic()
        for state in list(self._watched.values()):
            loop = state.loop()
            if loop is None or state.expected is None or state.paused or not loop.is_running():
                continue
            late = now - state.expected
            if late > 0 and (worst is None or late > worst):
                worst = late
        return 0.0 if worst is None else worst

    def look_now(self) -> None:
        """Catch a loop that is blocked right now with its stack (the watchdog's look,
        from the caller's thread): a sample that sees the lag must not miss the culprit
        because it came a moment before the watchdog."""
        now = time.monotonic()
        for state in list(self._watched.values()):
            try:
                self._look(state, now)
            except Exception:
                continue

    def _add(self, block: Block) -> None:
        self.blocks.append(block)
        self.seen += 1

    def since(self, seen: int) -> list[Block]:
        """The blocks seen after the count was ``seen`` (those still kept)."""
        new = min(self.seen - seen, len(self.blocks))
        return list(self.blocks)[-new:] if new > 0 else []

    def latest_block(self) -> Block | None:
        """The last block seen."""
        return self.blocks[-1] if self.blocks else None

    def use(self) -> None:
        """Count a user (a guard's component); :meth:`release` by the last one stops it."""
        with self._lock:
            self._users += 1

    def release(self) -> None:
        """One user fewer; the last one stops the monitor."""
        with self._lock:
            self._users = max(self._users - 1, 0)
            last = self._users == 0
        if last:
            self.stop()

    def stop(self) -> None:
        """Stop the watchdog and forget the loops (their timers stop at the next tick)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)
        self._thread = None
        logging.getLogger("asyncio").removeFilter(self._filter)
        with self._lock:
            self._watched.clear()
        self.forget()

    def forget(self) -> None:
        """Forget the lag measured and the blocks seen (for tests:
        ``runtime_guard.testing.reset``)."""
        self._worst = None
        self.blocks.clear()
        self._slow.clear()

    def after_fork(self) -> None:
        """In a forked child: no watchdog thread, and the parent's loops do not run here."""
        self._lock = threading.Lock()
        self._thread = None
        self._watched.clear()
        self._worst = None


class _SlowCallbackFilter(logging.Filter):
    """Notes the callbacks asyncio's debug mode reports as slow, by thread; filters nothing."""

    def __init__(self, slow: dict[int, tuple[float, str]]) -> None:
        super().__init__()
        self._slow = slow

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _SLOW_CALLBACK and record.args and record.thread is not None:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            if len(self._slow) >= _MAX_SLOW:  # loop threads that came and went
                self._slow.clear()
            self._slow[record.thread] = (time.monotonic(), str(args[0]))
        return True


default_monitor = LoopMonitor()
"""The monitor of this process's loops; ``Sample.loop_lag`` reads it."""
_fork.after_fork_in_child(default_monitor.after_fork)


def watch(loop: Any) -> None:
    """Measure ``loop``'s lag from now on (loops whose tasks the guard does not see, such
    as uvloop's, are watched this way; call it from the loop or before it runs)."""
    default_monitor.watch(loop)


class LoopLagComponent(Component):
    """Sends ``loop_blocked`` once per lag episode; holds the pressure up when asked to."""

    name = "looplag"

    def __init__(
        self,
        threshold: float = 0.5,
        pressure: Pressure | None = None,
        *,
        monitor: LoopMonitor | None = None,
        hooks: CreationHooks | None = None,
        discover: bool = True,
    ) -> None:
        self.threshold = threshold
        """Seconds late from which the loop is reported as blocked."""
        self.pressure = pressure
        """The level the guard is held at while lagging (``None``: lag is not an input)."""
        self.monitor = monitor or default_monitor
        """The monitor whose lag is judged."""
        self.monitor.threshold = threshold
        self.monitor.use()
        self.hooks = hooks if discover else None
        """Where new loops are learnt of (their first task); ``None``: only loops given to
        :func:`watch` are watched."""
        if discover and self.hooks is None:
            self.hooks = default_hooks
        self.lag: float | None = None
        """The lag of the latest sample."""
        self.episode = False
        """Whether the loop is lagging now (reported once)."""
        self._quiet = 0
        self._pending = self._samples = 0
        self._closed = False
        self._calm = self.monitor.seen  # blocks seen before this component are not its
        self._since = 0
        self._worst = 0.0
        if self.hooks is not None:
            self.hooks.enable()
            self.hooks.add_loop_listener(self.monitor.watch)

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        self._samples += 1
        # A new loop is rare: looked for on one sample in ten once one is watched.
        if self.hooks is not None and (
            self._samples % DISCOVER_EVERY == 0 or not self.monitor.watching()
        ):
            self.monitor.discover()
        self.lag = lag = sample.loop_lag
        lagging = lag is not None and lag >= self.threshold
        if lagging:
            self._quiet = 0
            if self.pressure is not None:
                self.pressure_floor = self.pressure
            if not self.episode:
                self.episode, self._pending, self._worst = True, DEFER_SAMPLES, 0.0
                self._since = self._calm  # blocks since the last calm sample
            self._worst = max(self._worst, lag or 0.0)
        else:
            self._calm = self.monitor.seen
        if self._pending:
            self._report(guard)
        if lagging or not self.episode:
            return
        self._quiet += 1
        if self._quiet >= QUIET_SAMPLES:
            self.episode = False
            self.pressure_floor = Pressure.OK

    def _report(self, guard: Guard) -> None:
        # The block that named its line is preferred: on a busy machine the watchdog may
        # see the loop blocked only at the episode's second or third block, so the signal
        # waits a few samples for one before it goes without.
        self.monitor.look_now()
        caught = [b for b in self.monitor.since(self._since) if b.stack]
        self._pending -= 1
        if not caught and self._pending > 0:
            return
        self._pending = 0
        block = caught[0] if caught else self.monitor.latest_block()
        callback = None if block is None else block.callback
        stack = [] if block is None else list(block.stack)
        lag = max(self._worst, 0.0 if block is None else block.lag)
        _log.warning(
            "runtime_guard: the event loop ran %s late%s\n%s",
            format_duration(lag),
            f", blocked by {callback}" if callback else "",
            "\n".join(f"    {line}" for line in stack),
        )
        guard.send(signals.loop_blocked, lag=lag, callback=callback, stack=stack)

    def health(self, guard: Guard) -> dict[str, Any]:
        block = self.monitor.latest_block()
        return {
            "event_loop": {
                "loops": self.monitor.watching(),
                "lag_seconds": None if self.lag is None else round(self.lag, 4),
                "lagging": self.episode,
                "last_block": None if block is None else block.to_dict(),
            }
        }

    def close(self, guard: Guard) -> None:
        if self._closed:
            return
        self._closed = True
        if self.hooks is not None:
            self.hooks.remove_loop_listener(self.monitor.watch)
            self.hooks.disable()
        self.monitor.release()
