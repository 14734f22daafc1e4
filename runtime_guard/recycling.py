"""Recycling before the OOM killer: the time left until CRITICAL against what a drain needs.

Relief comes first and shedding covers a spike; a leak in the app outgrows both. On every
sample this policy predicts when usage will reach the CRITICAL threshold (where the
middleware starts refusing requests) and the limit: the robust slope (Theil-Sen) of usage
over the last :data:`TREND_SECONDS`, counted only while the growth is sustained (the floor
of each third of the window above the one before), so a spike, a sawtooth or a one-off
step predicts nothing. A fall (a worker exited) restarts the trend after the replacement
is up; meanwhile the rate from before the fall goes on from the new usage.

A recycle is due when CRITICAL is within the drain budget (``recycle_drain``: what a
graceful recycle needs until the worker's memory is back; ``auto`` learns it from the
recycles in the container), or when usage stays CRITICAL for a second sample. Relief is
tried first; then one worker goes:

- the one whose own memory grew most since it started, among those whose memory is still
  rising (a worker whose own memory is flat is never recycled for a neighbour's leak);
- one per container at a time: the workers that share the limit agree through files in
  the container's shared directory (:mod:`runtime_guard._coordination`); the one that
  sees it first names the victim, the victim holds a lock until it exits, and the next
  waits until the replacement is up;
- after writing a report (:mod:`runtime_guard.recycle_report`); when usage grows fast
  relative to the headroom the leak diagnosis starts at once (within the tracemalloc duty
  cycle, one worker at a time), so even a worker recycled a minute after it started names
  its leaking line.

The middleware's 503s at CRITICAL stay as the last resort for the seconds at the edge.
``restart_after`` is for memory no worker's growth explains: after that long at CRITICAL
the worker that grew most is recycled anyway, one at a time and not before
``recycle_min_lifetime``. Without a server integration (nothing to recycle with) the
decision is sent as ``restart_requested`` for the host to act on, once per episode.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime_guard import signals
from runtime_guard._component import Component
from runtime_guard._container import process_alive
from runtime_guard._coordination import Coordinator, Peer, limit_group, recycling_directory
from runtime_guard._trend import theil_sen
from runtime_guard._units import format_size
from runtime_guard.pressure import Pressure
from runtime_guard.reports.files import write_report

if TYPE_CHECKING:
    from runtime_guard.config import Config
    from runtime_guard.guard import Guard
    from runtime_guard.sample import Sample

__all__ = [
    "DEFAULT_DRAIN",
    "LEAST_DRAIN",
    "MIN_GROWTH_SHARE",
    "TREND_SECONDS",
    "Prediction",
    "choose_victim",
    "predict",
    "sustained_rate",
]

_log = logging.getLogger("runtime_guard")

TREND_SECONDS = 30.0
"""Seconds of usage the trend is judged on."""

OWN_SECONDS = 60.0
"""Seconds over which a worker's own memory must have risen to be recycled for growth."""

SETTLE_SECONDS = 3.0
"""A worker's baseline is its lowest RSS from this long after its guard started (imports
and the first requests settle first). Short, because a worker started in a leaking one's
place leaks as fast from its first request: at 5 MiB/s every second of waiting here is
5 MiB less headroom when it is recycled in turn."""

FLOOR_SECONDS = 3.0
"""A worker's own memory now is its lowest RSS over this many last seconds: the peak of
a request in flight is not growth."""

LEAST_RISING_SPAN = 3.0
"""Seconds after its baseline before a worker's memory can count as rising."""

MIN_GROWTH_SHARE = 0.02
"""A worker whose RSS grew by less than this share of the limit has nothing to give back."""

MIN_RISING_SHARE = 0.01
"""A worker whose RSS floor rose by less than this share of the limit over
:data:`OWN_SECONDS` is flat: recycling it would not stop the growth."""

DROP_SHARE = 0.015
"""A fall of usage between two samples by more than this share of the limit (a worker
exited, relief freed memory) starts the trend again after it."""

DEFAULT_DRAIN = 10.0
"""The drain budget (seconds) before any drain was measured, with ``recycle_drain="auto"``."""

LEAST_DRAIN = 5.0
"""The least drain budget ``auto`` sets, however fast the drains measured were: it covers
a sample interval of delay and a slower drain than the fastest seen."""

_MIN_POINTS = 6
# Theil-Sen is quadratic in its points: 16 (120 pairs) cost about 40 us here, and a robust
# slope of a 30 s trend needs no more.
_MAX_POINTS = 16
# Points kept per window: samples closer than the window / _BUCKETS merge into one, so
# memory and the work per sample stay bounded whatever the interval (tests, a host calling
# sample() in a loop).
_BUCKETS = 60
_PUBLISH_EVERY = 10.0
_STUCK_FACTOR = 6.0
# Seconds after a new worker's guard started before its memory counts as settled: the
# imports after gunicorn's post_fork, the first requests of a fresh interpreter.
_REPLACEMENT_SETTLE = 2.0
# A fall this long after a recycle began is not its drain (some other worker's exit).
_DRAIN_SEEN_WITHIN = 120.0
# Drain budgets auto never exceeds, and how often the measured drains are read again.
_MOST_DRAIN = 60.0
_DRAINS_EVERY = 30.0
# The most a worker waits for the one recycled before it to be replaced (a replacement
# without a guard never says it is up).
_TURN_GAP = 30.0
# Seconds a diagnosis window ends before the recycle is due: its heap walks (a second or
# so on a big heap) and a late sample fit in them.
_DIAGNOSIS_MARGIN = 3.0
_STUCK_LEAST = 60.0


@dataclass(frozen=True)
class Prediction:
    """When usage reaches the CRITICAL threshold and the limit at its recent, sustained rate."""

    seconds_to_limit: float | None
    """Seconds until the hard limit; ``None`` when usage is not growing steadily."""
    seconds_to_critical: float | None
    """Seconds until the CRITICAL threshold, where the middleware starts refusing requests
    (0 once there); ``None`` when usage is not growing steadily."""
    rate: float
    """Bytes per second usage grows by (0 when not growing steadily)."""
    what: str
    """``"container"`` (usage against the limit) or ``"process"`` (RSS against
    ``process_limit``): the one that is reached first."""


NO_PREDICTION = Prediction(None, None, 0.0, "container")


def sustained_rate(
    points: Sequence[tuple[float, ...]],
    drop: float,
    margin: float,
    *,
    min_span: float = TREND_SECONDS / 3,
    settled: float | None = None,
    column: int = 1,
    fall: int | None = None,
) -> float:
    """The robust growth rate per second of ``(t, value)`` points, or 0 when not sustained.

    A fall larger than ``drop`` (a worker exited, relief freed memory) restarts the trend,
    and the seconds right after it do not count: the worker started in the exited one's
    place fills its memory then (imports, a fresh interpreter under uvicorn's spawn:
    seconds of steep growth that is no leak). They end ``min_span`` seconds after the fall,
    or at ``settled`` when that is earlier (the caller saw the new worker up). Then the
    points must span half of ``min_span`` (``min_span`` when no fall restarted them). The
    growth is sustained when the lowest value of each third of the points exceeds the
    lowest of the third before by more than ``margin``: a spike, a sawtooth or a one-off
    step up does not pass. ``column`` says which item of each point is the value; ``fall``
    is where the last fall is, when the caller found it already.
    """
    start = last_fall(points, drop, column) if fall is None else fall
    span = min_span
    if start:
        until = points[start][0] + min_span
        if settled is not None and settled >= points[start][0]:
            until = min(until, settled)
        while start < len(points) and points[start][0] < until:
            start += 1
        span = min_span / 2  # the skip was the wait; enough points from then on
    n = len(points) - start
    if n < _MIN_POINTS or points[-1][0] - points[start][0] < span:
        return 0.0
    third = n // 3
    bounds = (start, start + third, start + 2 * third, len(points))
    floors = [min(points[i][column] for i in range(a, b)) for a, b in itertools.pairwise(bounds)]
    if not all(b - a > margin for a, b in itertools.pairwise(floors)):
        return 0.0
    recent = [(points[i][0], points[i][column]) for i in range(start, len(points))]
    if len(recent) > _MAX_POINTS:
        step = len(recent) / _MAX_POINTS
        recent = [recent[int(i * step)] for i in range(_MAX_POINTS - 1)] + [recent[-1]]
    return max(theil_sen(recent), 0.0)


def last_fall(points: Sequence[tuple[float, ...]], drop: float, column: int = 1) -> int:
    """Index of the point right after the last fall larger than ``drop`` (0 if none)."""
    for i in range(len(points) - 1, 0, -1):
        if points[i - 1][column] - points[i][column] > drop:
            return i
    return 0


def predict(
    points: Sequence[tuple[float, float, float]],
    limit: int,
    critical: float,
    *,
    process_limit: int | None = None,
    settled: float | None = None,
    fall: int | None = None,
) -> Prediction:
    """Predict from ``(t, usage, rss)`` points when usage reaches ``critical`` and ``limit``.

    ``critical`` is the CRITICAL threshold as a fraction of the limit. With
    ``process_limit``, RSS against it too; the one reached first wins. ``settled``: when
    the worker started after the last fall was up (see :func:`sustained_rate`); ``fall``:
    where the last fall of usage is, when the caller found it already.
    """
    if not points or limit <= 0:
        return NO_PREDICTION
    found = []
    series = [(limit, 1, "container")]
    if process_limit:
        series.append((process_limit, 2, "process"))
    for budget, column, what in series:
        drop = budget * DROP_SHARE
        rate = sustained_rate(
            points,
            drop,
            drop / 10,
            settled=settled,
            column=column,
            fall=fall if column == 1 else None,
        )
        if rate > 0:
            now = points[-1][column]
            to_limit = max(budget - now, 0.0) / rate
            to_critical = max(budget * critical - now, 0.0) / rate
            found.append(Prediction(to_limit, to_critical, rate, what))
    if not found:
        return NO_PREDICTION
    return min(found, key=lambda p: p.seconds_to_critical or 0.0)


def choose_victim(
    peers: Sequence[Peer], min_growth: int, min_rising: int, exclude: int | None = None
) -> Peer | None:
    """The worker to recycle: grew most since it started, among those still rising.

    A worker whose own memory is flat (``rising`` under ``min_rising``) or that has little
    to give back (``growth`` under ``min_growth``) is never chosen. Ties go to the older.
    """
    candidates = [
        p for p in peers if p.pid != exclude and p.growth >= min_growth and p.rising >= min_rising
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.growth, -p.started, -p.pid))


class RecyclePolicy(Component):
    """Predicts the time to the limit and recycles one worker early enough (see the module)."""

    name = "recycling"

    def __init__(
        self,
        config: Config,
        directory: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.auto_drain = config.recycle_drain == "auto"
        """Whether the drain budget follows the drains measured in the container."""
        drain = config.recycle_drain
        self.drain: float | None = (
            DEFAULT_DRAIN if self.auto_drain else drain if isinstance(drain, float) else None
        )
        """Seconds a recycle needs until the worker's memory is back (``None``: predictive
        recycling off; only ``restart_after`` acts, as a plain timer). With ``auto``, twice
        the longest drain measured in the container (at least :data:`LEAST_DRAIN`),
        :data:`DEFAULT_DRAIN` until one is."""
        self.measured_drain: float | None = None
        """The longest drain measured in the container lately (``auto``), in seconds."""
        self.restart_after = config.restart_after
        """Seconds usage may stay CRITICAL with no growing worker before the one that grew
        most is recycled anyway (``None``: never)."""
        self.min_lifetime = config.recycle_min_lifetime
        """Seconds a worker lives at least before a recycle not explained by its growth."""
        self.clock = clock
        """Time source for the CRITICAL timer and the lock's hold (injectable for tests)."""
        self._config = config
        self._directory = directory
        self._coordinator: Coordinator | None = None
        self._alone = False
        self._reset()

    def _reset(self) -> None:
        self._points: deque[tuple[float, int, int, int]] = deque(maxlen=_BUCKETS + 1)
        self._trend: deque[tuple[float, int, int]] = deque(maxlen=_BUCKETS + 1)
        self._started: float | None = None
        self._started_wall = time.time()
        self._baseline: int | None = None
        self.prediction = NO_PREDICTION
        """The latest prediction."""
        self.state = "idle"
        """``idle``, ``pending`` (a recycle is due; another worker or nobody to recycle yet),
        ``waiting`` (another worker of the container recycles now), ``requested``
        (``restart_requested`` sent, no integration to recycle with) or ``recycling``."""
        self.reason: str | None = None
        """Why a recycle is pending or under way."""
        self.growth = 0
        """Bytes this worker's RSS grew since its baseline."""
        self.rising = 0
        """Bytes its RSS floor rose over the last :data:`OWN_SECONDS`."""
        self.restart_sent = False
        """Whether ``restart_requested`` was sent in the current episode."""
        self.report_path: str | None = None
        """Where the last recycle report was written."""
        self._critical_since: float | None = None
        self._critical_samples = 0
        self._last_rate: tuple[float, float] | None = None
        self._pending_sent = False
        self._relieved_at: float | None = None
        self._seen_relief: object = None
        self._watched: tuple[int, float] | None = None
        self._drains_read = float("-inf")
        self._recycling_since: float | None = None
        self._published_at = float("-inf")
        self._diagnosis_asked = False

    # -- the cheap part: every sample -----------------------------------------------------

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        now = sample.monotonic
        if self._started is None:
            self._started = now
        self._record(sample)
        self._note_relief(guard, now)
        age = now - self._started
        if age >= SETTLE_SECONDS:
            # The lowest RSS since the worker settled: the lowest of its floors, too.
            self._baseline = min(self._baseline or sample.rss, sample.rss)
        self.prediction = self._predict(guard, list(self._trend), sample)
        critical = sample.pressure >= Pressure.CRITICAL
        if not critical:
            self._critical_since = None
            self._critical_samples = 0
        else:
            self._critical_samples += 1
            if self._critical_since is None:
                self._critical_since = self.clock()
        if self.state == "recycling":
            self._check_stuck(guard)
            return
        if self.drain is None:
            self._timer_only(guard, sample, critical)
            return
        p = self.prediction
        coordinator = self._ensure_coordinator(guard)
        close = sample.pressure >= Pressure.ELEVATED or p.rate > 0
        if close or now - self._published_at >= _PUBLISH_EVERY:
            # This worker's own figures are needed only when they are shown or decided on.
            self._track_own(sample, age)
            if coordinator is not None:
                coordinator.publish(self._started_wall, self.growth, self.rising)
            self._published_at = now
        self._maybe_diagnose(guard, sample, age)
        # Due: at this rate the middleware would start refusing requests within a drain.
        due = p.seconds_to_critical is not None and p.seconds_to_critical <= self.drain
        # Named: another worker saw it first (its trend may start earlier than this one's,
        # which a neighbour's exit restarted, or which a young worker has not had time to
        # gather) and chose this worker. Read from ELEVATED on: one small file per sample.
        named = None
        if sample.pressure >= Pressure.ELEVATED or (
            p.seconds_to_critical is not None and p.seconds_to_critical <= 3 * self.drain
        ):
            named = self._named(guard, coordinator)
        # Stuck: CRITICAL with no steady growth (shedding stopped it, or a step filled the
        # container) for restart_after: no trend will ever say when.
        stuck = critical and self._critical_for() >= (self.restart_after or float("inf"))
        # CRITICAL a second sample running (not a spike that relief and shedding end at
        # once): a worker whose own memory keeps rising goes now, trend or no trend.
        held = self._critical_samples >= 2
        if due or stuck or held or named is not None:
            self._decide(guard, sample, due or held, critical, named)
        elif not critical and (
            p.seconds_to_critical is None or p.seconds_to_critical > 2 * self.drain
        ):
            self._calm()

    def _measure_drain(self, now: float) -> None:
        """``auto``: learn how long recycles take here, from when their workers end.

        The worker that recycles writes when it decided; any other worker sees on its next
        samples when that process is gone (its memory back with it), and the time between
        is a drain, recorded for all. One ``stat`` per sample while nothing recycles.
        """
        coordinator = self._coordinator
        if not self.auto_drain or coordinator is None:
            return
        changed = coordinator.holder_changed()
        if changed is not None:
            pid, since = changed.get("pid"), changed.get("since")
            # Only a recycle seen while its worker still runs can be timed: one already
            # gone (the worker this one replaced) ended at a moment nobody saw.
            mine = pid == os.getpid()
            if isinstance(pid, int) and not mine and isinstance(since, (int, float)):
                self._watched = (pid, float(since)) if process_alive(pid) else None
        watched = self._watched
        if watched is not None and not process_alive(watched[0]):
            self._watched = None
            seconds = time.time() - watched[1]
            if 0 <= seconds <= _DRAIN_SEEN_WITHIN:
                coordinator.record_drain(watched[1], seconds)
                self._drains_read = float("-inf")
        if now - self._drains_read >= _DRAINS_EVERY:
            self._drains_read = now
            drains = coordinator.drains()
            if drains:
                self.measured_drain = max(drains.values())
                self.drain = min(max(LEAST_DRAIN, 2 * self.measured_drain), _MOST_DRAIN)

    def _predict(
        self, guard: Guard, recent: Sequence[tuple[float, float, float]], sample: Sample
    ) -> Prediction:
        fall = last_fall(recent, sample.limit * DROP_SHARE)
        self._measure_drain(sample.monotonic)
        found = predict(
            recent,
            sample.limit,
            guard.config.critical,
            process_limit=self._config.process_limit,
            settled=self._replacement_up(guard, recent, fall, sample) if fall else None,
            fall=fall,
        )
        now = sample.monotonic
        if found.rate > 0:
            self._last_rate = (now, found.rate)
            return found
        # A fall (a worker of the container exited) leaves no trend for a while; the leak
        # goes on at the rate it had just before, now from the lower usage.
        last = self._last_rate
        if last is None or not fall or last[0] > recent[fall][0] or now - last[0] > TREND_SECONDS:
            return found
        rate = last[1]
        critical = sample.limit * guard.config.critical
        return Prediction(
            max(sample.limit - sample.usage, 0) / rate,
            max(critical - sample.usage, 0) / rate,
            rate,
            "container",
        )

    def _replacement_up(
        self,
        guard: Guard,
        recent: Sequence[tuple[float, float, float]],
        fall: int,
        sample: Sample,
    ) -> float | None:
        """When the worker started after the fall at ``fall`` was up (its guard started,
        plus a few seconds of settling), on the samples' clock; ``None`` when unknown."""
        if sample.monotonic - recent[fall][0] >= TREND_SECONDS / 3:
            return None
        coordinator = self._ensure_coordinator(guard)
        if coordinator is None:
            return None
        fall_wall = time.time() - (sample.monotonic - recent[fall][0])
        started = [p.started for p in coordinator.peers() if p.started >= fall_wall - 1.0]
        if not started:
            return None
        return sample.monotonic - (time.time() - max(started)) + _REPLACEMENT_SETTLE

    def _record(self, sample: Sample) -> None:
        now = sample.monotonic
        usage, rss = sample.usage, sample.rss
        # At most _BUCKETS points per window whatever the interval: samples closer than a
        # bucket merge into their floor, so the cost per sample stays that of 1 s sampling.
        points, trend = self._points, self._trend
        if points and now - points[-1][0] < OWN_SECONDS / _BUCKETS:
            t, u, r, _ = points[-1]
            points[-1] = (t, min(u, usage), min(r, rss), sample.heap_blocks)
        else:
            points.append((now, usage, rss, sample.heap_blocks))
        if trend and now - trend[-1][0] < TREND_SECONDS / _BUCKETS:
            t, u, r = trend[-1]
            trend[-1] = (t, min(u, usage), min(r, rss))
        else:
            trend.append((now, usage, rss))
        for window, seconds in ((points, OWN_SECONDS), (trend, TREND_SECONDS)):
            while window and window[0][0] < now - seconds:
                window.popleft()

    def _track_own(self, sample: Sample, age: float) -> None:
        if age < SETTLE_SECONDS or self._baseline is None:
            return
        now = sample.monotonic
        recent = itertools.takewhile(lambda p: p[0] >= now - FLOOR_SECONDS, reversed(self._points))
        floor = min((p[2] for p in recent), default=sample.rss)
        self.growth = max(floor - self._baseline, 0)
        span = min(OWN_SECONDS, age - SETTLE_SECONDS)
        if span < LEAST_RISING_SPAN:
            self.rising = 0
            return
        bound = now - span + span / 3
        first = itertools.takewhile(lambda p: p[0] <= bound, self._points)
        lowest = min((p[2] for p in first), default=None)
        self.rising = 0 if lowest is None else max(floor - lowest, 0)

    def _ensure_coordinator(self, guard: Guard) -> Coordinator | None:
        """The agreement with the other workers, once a server integration recycles this
        one; a guard without one (a script, a test) decides alone and writes nothing."""
        if self._coordinator is None and not self._alone and guard.component("recycler"):
            directory = self._directory or recycling_directory(limit_group(guard.sources))
            if directory is None:
                # The container's shared directory is off or unusable (logged there).
                self._alone = True
                return None
            self._coordinator = Coordinator(directory)
        return self._coordinator

    def _calm(self) -> None:
        if self.state in ("pending", "waiting", "requested"):
            _log.info("runtime_guard: recycle no longer needed: usage stopped closing in")
        if self.state != "idle" or self._pending_sent:
            self.state, self.reason, self._pending_sent = "idle", None, False
            self.restart_sent = False

    def _timer_only(self, guard: Guard, sample: Sample, critical: bool) -> None:
        """``recycle_drain="off"``: ``restart_after`` alone, once per CRITICAL episode."""
        if not critical:
            self.restart_sent = False
            return
        stayed = self.clock() - (self._critical_since or self.clock())
        if self.restart_sent or self.restart_after is None or stayed < self.restart_after:
            return
        self.restart_sent = True
        self.reason = _critical_reason(stayed, sample)
        # The event log records it (an ERROR record); the guard itself never exits:
        # recycling belongs to a server integration or the host.
        guard.send(signals.restart_requested, reason=self.reason)

    # -- the decision: only when a recycle is due -------------------------------------------

    def _named(self, guard: Guard, coordinator: Coordinator | None) -> str | None:
        """The reason another worker gave for naming this one, while it is fresh."""
        if coordinator is None:
            return None
        named = coordinator.named(fresh=max(3 * guard.config.interval, 3.0))
        if named is None or named.get("victim") != os.getpid():
            return None
        return f"{named.get('reason')} (seen first by worker pid {named.get('by')})"

    def _decide(
        self, guard: Guard, sample: Sample, due: bool, critical: bool, named: str | None = None
    ) -> None:
        if due and self._config.relief and not self._relieved_recently(sample):
            result = guard.relieve()
            self._relieved_at = sample.monotonic
            if result.usage_before - result.usage_after > self._margin(sample):
                return  # relief bought the time back; judged again on the next samples
        reason = self._reason(sample, critical) if due else (named or "")
        coordinator = self._coordinator
        peers = coordinator.peers() if coordinator is not None else []
        holder = coordinator.holder() if coordinator is not None else None
        me = os.getpid()
        if not any(p.pid == me for p in peers):
            peers = [*peers, Peer(me, self._started_wall, self.growth, self.rising, time.time())]
        limit = sample.limit
        victim = None
        min_growth, min_rising = int(limit * MIN_GROWTH_SHARE), int(limit * MIN_RISING_SHARE)
        if due:
            victim = choose_victim(peers, min_growth, min_rising)
        if victim is None and named is not None:
            # Chosen on the figures this worker published; still never a flat worker.
            victim = choose_victim([p for p in peers if p.pid == me], min_growth, min_rising)
        if victim is None and critical and self._critical_for() >= (self.restart_after or 1e18):
            # Nothing grows that a recycle would give back, and shedding did not end it:
            # the worker that grew most goes anyway (the host decides, without a recycler).
            if guard.component("recycler") is None:
                victim = next(p for p in peers if p.pid == me)
            else:
                victim = self._fallback_victim(peers)
            reason = _critical_reason(self._critical_for(), sample)
        reason = reason or self._reason(sample, critical)
        if not self._pending_sent:
            self._pending_sent = True
            guard.send(
                signals.recycle_pending,
                reason=reason,
                seconds_to_limit=self.prediction.seconds_to_limit,
            )
        if holder is not None and holder.get("pid") != me:
            self.state = "waiting"
            self.reason = f"{reason}; waiting for worker pid {holder.get('pid')} to recycle"
            return
        if victim is None:
            self.state = "pending"
            self.reason = f"{reason}; no worker's own memory grows enough to give it back"
            return
        if victim.pid != me:
            self.state = "pending"
            self.reason = f"{reason}; worker pid {victim.pid} grew most and recycles"
            if coordinator is not None:
                coordinator.name_victim(victim.pid, reason)
            return
        self._recycle(guard, sample, reason, coordinator)

    def _note_relief(self, guard: Guard, now: float) -> None:
        # The automatic relief's last result changes when it runs: seen one sample late at
        # most, which is all "recently" needs.
        last = getattr(guard.component("relief"), "last", None)
        if last is not None and last is not self._seen_relief:
            self._seen_relief = last
            self._relieved_at = now

    def _relieved_recently(self, sample: Sample) -> bool:
        last = self._relieved_at
        return last is not None and sample.monotonic - last < self._config.relief_cooldown

    def _margin(self, sample: Sample) -> float:
        rate = self.prediction.rate
        return rate * (self.drain or 0.0) if rate > 0 else sample.limit * DROP_SHARE

    def _critical_for(self) -> float:
        since = self._critical_since
        return 0.0 if since is None else self.clock() - since

    def _fallback_victim(self, peers: Sequence[Peer]) -> Peer | None:
        now = time.time()
        old = [p for p in peers if now - p.started >= self.min_lifetime]
        if not old:
            return None
        return max(old, key=lambda p: (p.growth, -p.started, -p.pid))

    def _reason(self, sample: Sample, critical: bool) -> str:
        p = self.prediction
        where = f"{format_size(sample.usage)} of {format_size(sample.limit)}"
        if p.seconds_to_critical is not None and p.seconds_to_limit is not None:
            what = "the limit" if p.what == "container" else "process_limit"
            text = (
                f"usage grows {format_size(p.rate * 60)}/min ({where}): CRITICAL in "
                f"~{p.seconds_to_critical:.0f} s, {what} in ~{p.seconds_to_limit:.0f} s, "
                f"within the {self.drain:g} s a drain needs"
            )
        else:
            text = f"usage is CRITICAL ({where}, {sample.usage_fraction:.0%})"
        return text

    def _maybe_diagnose(self, guard: Guard, sample: Sample, age: float) -> None:
        """Start the leak diagnosis at once when the ordinary detector would come too late."""
        from runtime_guard.leaks.detector import LeakDetector

        detector = guard.component("leaks")
        if not isinstance(detector, LeakDetector):
            return
        coordinator = self._coordinator
        if coordinator is not None and coordinator.holding("diagnosis") and not detector.diagnosing:
            coordinator.release("diagnosis")
        left = self.prediction.seconds_to_critical
        limit = sample.limit
        if self._diagnosis_asked or left is None or self.rising < limit * MIN_RISING_SHARE:
            return
        config = self._config
        ordinary = (
            max(config.leak_warmup - age, 0.0)
            + (config.leak_confirm + 1) * config.leak_window
            + config.leak_diagnosis_window
        )
        drain = self.drain or 0.0
        if left - drain > 2 * ordinary:
            return
        # The window and the heap walks that end it run on the sampler thread, which must be
        # free again when the recycle comes due: a window ends a few seconds before that,
        # and too close to it none starts.
        room = left - drain - _DIAGNOSIS_MARGIN
        if room < 1.0:
            return
        if not detector.can_diagnose_early(sample.monotonic, 1.0):
            return  # the duty cycle does not allow a second of tracing yet
        if coordinator is not None and not self._others_serve(coordinator):
            return
        if coordinator is not None and not coordinator.try_lock("leak diagnosis", "diagnosis"):
            return  # another worker is being traced: this one serves at full speed meanwhile
        points = [(t, r, h) for t, _, r, h in self._points]
        if detector.diagnose_early(sample, points, least_trace=1.0, most_seconds=room):
            self._diagnosis_asked = True
        elif coordinator is not None:
            coordinator.release("diagnosis")

    def _others_serve(self, coordinator: Coordinator) -> bool:
        """Whether the other workers are all up: none recycling, none just started.

        Tracing slows this worker's requests several times over; that is fine while the
        others take the load, not while one of them is gone or still starting.
        """
        if coordinator.holder() is not None:
            return False
        now, me = time.time(), os.getpid()
        return all(now - p.started >= SETTLE_SECONDS for p in coordinator.peers() if p.pid != me)

    # -- the recycle ---------------------------------------------------------------------

    def _recycle(
        self, guard: Guard, sample: Sample, reason: str, coordinator: Coordinator | None
    ) -> None:
        recycler = guard.component("recycler")
        if recycler is None or not hasattr(recycler, "recycle_now"):
            # No integration: the host decides. Once per episode, and no lock, since
            # nothing here will end this process and free it.
            if not self.restart_sent:
                self.restart_sent = True
                self.state, self.reason = "requested", reason
                guard.send(signals.restart_requested, reason=reason)
            return
        if coordinator is not None and not self._previous_turn_over(coordinator, sample):
            self.state = "waiting"
            self.reason = f"{reason}; the worker recycled last is not replaced yet"
            return
        # The sample may be a second old: a neighbour that exited since gave memory back.
        fresh = guard.read()
        if fresh.usage < sample.usage - sample.limit * DROP_SHARE:
            return
        if coordinator is not None and not coordinator.try_lock(reason):
            self.state = "waiting"
            self.reason = f"{reason}; another worker of the container recycles first"
            return
        reason = f"{reason}; this worker grew {format_size(self.growth)} since it started"
        self.state, self.reason = "recycling", reason
        self._recycling_since = self.clock()
        self.restart_sent = True
        try:
            self.report_path = self._write_report(guard, sample, reason)
        except Exception:
            _log.exception("runtime_guard: the recycle report failed; recycling anyway")
        recycler.recycle_now(reason)
        guard.send(signals.restart_requested, reason=reason)

    def _previous_turn_over(self, coordinator: Coordinator, sample: Sample) -> bool:
        """Whether the worker recycled last in the container is replaced (or long gone).

        Its lock is free once it exited, but its replacement may still be starting: a
        second recycle then would leave the container without a worker that serves. This
        worker, started after that recycle and up, may be the replacement: a leak that goes
        on in the worker started in the leaking one's place (the same code, the same
        traffic) is then its own to end, not a turn to wait for.
        """
        last = coordinator.last_holder()
        since = last.get("since") if last else None
        if not isinstance(since, (int, float)) or last is None or last.get("pid") == os.getpid():
            return True
        now = time.time()
        if now - since >= _TURN_GAP:
            return True
        age = sample.monotonic - (self._started if self._started is not None else sample.monotonic)
        if self._started_wall >= since and age >= _REPLACEMENT_SETTLE:
            return True
        me = os.getpid()
        return any(
            p.started >= since and now - p.started >= _REPLACEMENT_SETTLE
            for p in coordinator.peers()
            if p.pid != me
        )

    def _check_stuck(self, guard: Guard) -> None:
        since = self._recycling_since
        hold = max(_STUCK_LEAST, _STUCK_FACTOR * (self.drain or 0.0))
        if since is None or self.clock() - since < hold or self._coordinator is None:
            return
        if self._coordinator.holding():
            _log.warning(
                "runtime_guard: worker pid %d still runs %.0f s after its recycle began; "
                "letting another worker of the container recycle",
                os.getpid(),
                self.clock() - since,
            )
            self._coordinator.release()

    def _write_report(self, guard: Guard, sample: Sample, reason: str) -> str | None:
        from runtime_guard.recycle_report import build_recycle_report, summary_line

        data = build_recycle_report(guard, sample, self, reason)
        _log.warning("runtime_guard: %s", summary_line(data))
        report_dir = guard.config.report_dir
        return write_report(report_dir, "recycle", data) if report_dir else None

    # -- reporting and lifecycle ---------------------------------------------------------

    def details(self) -> dict[str, Any]:
        """The figures a recycle report and ``health()`` show about this worker."""
        return {
            "pid": os.getpid(),
            "state": self.state,
            "reason": self.reason,
            "seconds_to_limit": _round(self.prediction.seconds_to_limit),
            "usage_rate_bytes_per_second": round(self.prediction.rate, 1),
            "limit_reached_by": self.prediction.what,
            "drain_seconds": self.drain,
            "drain_measured_seconds": self.measured_drain,
            "growth_bytes": self.growth,
            "rising_bytes": self.rising,
            "uptime_seconds": round(time.time() - self._started_wall, 3),
        }

    def health(self, guard: Guard) -> dict[str, Any]:
        pending = self.state in ("pending", "waiting", "requested", "recycling")
        return {
            "recycle_pending": pending,
            "recycle_reason": self.reason if pending else None,
            "seconds_to_limit": _round(self.prediction.seconds_to_limit),
            "recycle": self.details(),
            "restart_requested": self.restart_sent,
        }

    def after_fork(self, guard: Guard) -> None:
        if self._coordinator is not None:
            self._coordinator.after_fork()
        self._reset()

    def close(self, guard: Guard) -> None:
        if self._coordinator is not None and self.state != "recycling":
            self._coordinator.close()


def _critical_reason(stayed: float, sample: Sample) -> str:
    return (
        f"usage stayed CRITICAL for {stayed:.0f} s after relief and shedding "
        f"({format_size(sample.usage)} of {format_size(sample.limit)}, "
        f"{sample.usage_fraction:.0%})"
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
