"""Growth-leak detection on post-GC baselines, and the report that explains a suspicion.

The :class:`LeakDetector` component reads only what every sample already carries: the
Python heap (``sys.getallocatedblocks()``) and the process's RSS. Per window of
``leak_window`` seconds it keeps their minima, the floor they return to after each
collection, which temporary allocations, a sawtooth or a burst cannot raise. A leak is a
floor that rose in every one of the last ``leak_confirm`` windows (CPython's ``-R`` rule)
at a Theil-Sen rate of at least ``leak_min_rate``. A cache that plateaus or a one-off step
(a lazy import, a pool filling up) rises once or twice and then stops, so it never passes.

After a suspicion the detector opens one diagnosis window on the sampler thread: a type
census at each end, tracemalloc between them (on demand, within a duty-cycle cap), and a
referrer chain for the type that grew most. Then it sends ``signals.leak_suspected`` with
a :class:`LeakReport`, once per episode, and again only if the rate changes materially or
after ``leak_repeat_after`` seconds.
"""

from __future__ import annotations

import _tracemalloc
import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime_guard import _interpreter, diagnosis, signals
from runtime_guard._component import Component
from runtime_guard._trend import sustained_growth, theil_sen
from runtime_guard._units import format_size
from runtime_guard.config import ConfigError
from runtime_guard.leaks.report import LeakReport
from runtime_guard.reports.files import write_report

if TYPE_CHECKING:
    import tracemalloc
    from collections import Counter
    from collections.abc import Sequence

    from runtime_guard.config import Config
    from runtime_guard.diagnosis.census import TypeGrowth
    from runtime_guard.diagnosis.sites import AllocationSite
    from runtime_guard.diagnosis.tracing import TracemallocSession
    from runtime_guard.guard import Clock, Guard
    from runtime_guard.sample import Sample

__all__ = ["LeakDetector"]

_log = logging.getLogger("runtime_guard")

# Mean size of a small allocation in a typical CPython heap (measured here: tracemalloc over
# the stdlib, blinker and a few thousand application objects gave 83 bytes per block). It
# turns a heap-block rate into bytes when RSS does not grow with the heap (freed memory
# reused); when RSS grows too its own, measured rate is used.
_BYTES_PER_BLOCK = 80

# pymalloc's largest block; bigger allocations go to malloc and are not heap blocks.
_MAX_BLOCK = 512

# A floor counts as risen in a window only by more than this share of the minimum rate's
# per-window step. Below it is creep, not growth: pages of RSS noise, and the guard's own
# history filling during its first hour (about 140 heap blocks per 10 s window, measured),
# which beside a one-off step spread over two windows would otherwise pass the N-window rule.
_MIN_STEP_SHARE = 0.5

# A rate this much higher or lower (as a ratio) than the one last signalled is a material
# change and is reported again.
_MATERIAL_CHANGE = 1.5

# Leak report files are written at most this often, whatever the number of episodes.
_REPORT_FILE_SECONDS = 300.0

# Samples a diagnosis waits for a moment when no thread starts or ends (CPython gh-128679)
# before it goes on without tracemalloc.
_SETTLE_SAMPLES = 10

# A tracemalloc window shorter than this shows too little growth to be worth its cost.
_MIN_TRACE_SECONDS = 1.0

# Points an early verdict's Theil-Sen rates are computed from at most (quadratic cost).
_EARLY_POINTS = 30

# Types that grew by fewer instances than this in a diagnosis window get no chain.
_MIN_CHAIN_GROWTH = 10
_TOP = 10


@dataclass
class _Verdict:
    metric: str
    rate: float
    heap_rate: float
    rss_rate: float
    duration: float


@dataclass
class _Episode:
    report: LeakReport
    diagnose: bool = True
    signalled_rate: float | None = None
    signalled_at: float | None = None
    negatives: int = 0
    early: bool = False
    most_seconds: float | None = None


@dataclass
class _Diagnosis:
    started: float
    deadline: float
    census: Counter[str]
    session: TracemallocSession | None
    snapshot: tracemalloc.Snapshot | None
    heap_walk: float
    skipped: str
    rss_at_start: int


class LeakDetector(Component):
    """Watches the heap and RSS floors for sustained growth; diagnoses and reports leaks."""

    name = "leaks"

    chain_depth = 8
    """Links the referrer-chain search follows back from an instance at most."""
    chain_seconds = 0.5
    """Seconds the referrer-chain search and the instance search may take, each."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        if config.leak_windows < config.leak_confirm + 1:
            raise ConfigError(
                f"leak_windows={config.leak_windows} is not accepted: it must be more than "
                f"leak_confirm={config.leak_confirm}"
            )
        self._config = config
        self._clock: Clock = clock or time.monotonic
        if _interpreter.HEAP_BLOCKS_UNREAD is not None:
            _log.warning(
                "runtime_guard: growth leaks are judged on RSS alone: %s",
                _interpreter.HEAP_BLOCKS_UNREAD,
            )
        self._lock = threading.Lock()
        self._always: TracemallocSession | None = None
        if config.tracemalloc == "always":
            self._always = diagnosis.TracemallocSession(config.tracemalloc_frames)
            self._always.start()
        self._reset()

    def _reset(self) -> None:
        self._attached = self._clock()
        self._first: float | None = None
        self._latest: float | None = None
        # (window end, heap-block floor, RSS floor) of each complete, untainted window.
        self._floors: deque[tuple[float, float, float]] = deque(maxlen=self._config.leak_windows)
        self._win_start: float | None = None
        self._win_heap = 0.0
        self._win_rss = 0.0
        self._win_tainted = False
        self._episode: _Episode | None = None
        self._diag: _Diagnosis | None = None
        self._traced_seconds = 0.0
        self._lingering: TracemallocSession | None = None
        self._threads: frozenset[int] | None = None
        self._settle_waits = 0
        self._last_file = float("-inf")

    # -- the cheap part: every sample ----------------------------------------------------

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        now = sample.monotonic
        self._latest = now
        episode = self._episode
        looked = (
            self._diag is not None
            or self._lingering is not None
            or bool(episode and episode.diagnose)
        )
        settled = self._settled() if looked else True
        if self._lingering is not None and settled:
            self._lingering.stop()
            self._traced_seconds += self._lingering.seconds_on
            self._lingering = None
        if self._diag is not None:
            self._win_tainted = self._win_tainted or self._diag.session is not None
            if now >= self._diag.deadline:
                self._finish_diagnosis(guard, sample, settled)
        if self._first is None:
            self._first = now
        # Before the warm-up ends no floor counts; a diagnosis asked for early still runs.
        if now < self._first + self._config.leak_warmup:
            pass
        elif self._win_start is None:
            self._open_window(now, sample)
        elif now >= self._win_start + self._config.leak_window:
            if not self._win_tainted:
                self._floors.append((now, self._win_heap, self._win_rss))
            self._open_window(now, sample)
            self._window_closed(guard, sample)
        else:
            self._win_heap = min(self._win_heap, sample.heap_blocks)
            self._win_rss = min(self._win_rss, sample.rss)
        episode = self._episode
        if episode is not None and episode.diagnose and self._diag is None:
            if not looked:  # the suspicion is this sample's own
                settled = self._settled()
            if not settled and self._settle_waits < _SETTLE_SAMPLES:
                self._settle_waits += 1  # wait for a sample with the same threads as the last
                return
            self._settle_waits = 0
            episode.diagnose = False
            self._start_diagnosis(sample, settled)

    def _open_window(self, now: float, sample: Sample) -> None:
        self._win_start = now
        self._win_heap = float(sample.heap_blocks)
        self._win_rss = float(sample.rss)
        self._win_tainted = self._diag is not None and self._diag.session is not None

    def _window_closed(self, guard: Guard, sample: Sample) -> None:
        verdict = self._judge()
        with self._lock:
            episode = self._episode
            if episode is None:
                if verdict is not None:
                    self._begin(verdict, sample)
                return
            if verdict is None:
                episode.negatives += 1
                if episode.negatives >= self._config.leak_confirm:
                    self._episode = None
                    _log.info("runtime_guard: growth stopped; leak suspicion cleared")
                return
            episode.negatives = 0
            self._update(episode.report, verdict, sample)
            if self._diag is not None or episode.diagnose or episode.signalled_rate is None:
                return
            ratio = verdict.rate / episode.signalled_rate if episode.signalled_rate else 0.0
            material = not 1 / _MATERIAL_CHANGE < ratio < _MATERIAL_CHANGE
            stale = (
                episode.signalled_at is not None
                and sample.monotonic - episode.signalled_at >= self._config.leak_repeat_after
            )
            if material or stale:
                episode.diagnose = True

    def _judge(self, partial: tuple[float, float, float] | None = None) -> _Verdict | None:
        """The judgement on the recorded floors (and ``partial``, a window still open)."""
        floors = list(self._floors)
        if partial is not None:
            floors.append(partial)
        n = self._config.leak_confirm
        if len(floors) < n + 1:
            return None
        min_rate = float(self._config.leak_min_rate)
        per_window = min_rate * self._config.leak_window / 60.0
        times = [t / 60.0 for t, _, _ in floors]
        heap = [h for _, h, _ in floors]
        rss = [r for _, _, r in floors]
        for metric, values, scale in (("heap", heap, _BYTES_PER_BLOCK), ("rss", rss, 1)):
            if metric == "heap" and _interpreter.HEAP_BLOCKS_UNREAD is not None:
                continue  # a count the interpreter does not keep judges nothing
            if not sustained_growth(values, n, per_window * _MIN_STEP_SHARE / scale):
                continue
            # The typical recent step must reach the minimum rate on its own: a floor that
            # creeps a little every window plus one big step (a pool filling) is no leak,
            # though its Theil-Sen slope over a few windows would say so.
            steps = [b - a for a, b in itertools.pairwise(values[-(n + 1) :])]
            if _median(steps) * scale < per_window:
                continue
            run = _rising_run(values, per_window * _MIN_STEP_SHARE / scale)
            # The rate comes from the recent floors only, so a change of rate shows within
            # a few windows; the duration from the whole rising run.
            first = len(floors) - run - 1
            recent = max(first, len(floors) - (2 * n + 1))
            heap_rate = theil_sen(list(zip(times[recent:], heap[recent:], strict=True)))
            rss_rate = theil_sen(list(zip(times[recent:], rss[recent:], strict=True)))
            if metric == "heap" and heap_rate * _MAX_BLOCK < rss_rate:
                # Even at pymalloc's largest block the heap cannot explain what RSS gains
                # (a Python int per native buffer, say): the growth is RSS's, judged below.
                continue
            own_rate = heap_rate * _BYTES_PER_BLOCK if metric == "heap" else rss_rate
            if own_rate < min_rate:
                continue
            rate = max(rss_rate, own_rate)
            duration = (times[-1] - times[first]) * 60.0
            return _Verdict(metric, rate, heap_rate, rss_rate, duration)
        return None

    def _begin(self, verdict: _Verdict, sample: Sample) -> None:
        report = LeakReport(
            metric=verdict.metric,
            rate_bytes_per_min=0.0,
            heap_blocks_per_min=0.0,
            rss_bytes_per_min=0.0,
            duration_seconds=0.0,
            time_to_limit_seconds=None,
            usage_bytes=sample.usage,
            limit_bytes=sample.limit,
            detected_at=sample.wall,
        )
        self._update(report, verdict, sample)
        self._episode = _Episode(report)

    def _update(self, report: LeakReport, verdict: _Verdict, sample: Sample) -> None:
        report.metric = verdict.metric
        report.rate_bytes_per_min = verdict.rate
        report.heap_blocks_per_min = verdict.heap_rate
        report.rss_bytes_per_min = verdict.rss_rate
        report.duration_seconds = verdict.duration
        report.usage_bytes = sample.usage
        report.limit_bytes = sample.limit
        report.time_to_limit_seconds = self._time_to_limit(verdict.rate, sample)

    def _time_to_limit(self, rate: float, sample: Sample) -> float | None:
        if rate <= 0 or sample.limit <= 0:
            return None
        headroom = sample.limit - sample.usage
        process_limit = self._config.process_limit
        if process_limit:
            headroom = min(headroom, process_limit - sample.rss)
        return max(headroom, 0) / rate * 60.0

    # -- the bounded part: after a suspicion, on the sampler thread ----------------------

    def _settled(self) -> bool:
        """True when stopping tracemalloc now is safe; remembers the threads for next time."""
        now = diagnosis.thread_idents()
        previous, self._threads = self._threads, now
        return diagnosis.stop_is_safe(previous, now)

    def _start_diagnosis(self, sample: Sample, settled: bool) -> None:
        config = self._config
        begun = time.perf_counter()
        census = diagnosis.type_census()
        heap_walk = time.perf_counter() - begun
        length = config.leak_diagnosis_window
        episode = self._episode
        if episode is not None and episode.most_seconds is not None:
            length = min(length, max(episode.most_seconds, _MIN_TRACE_SECONDS))
        session: TracemallocSession | None = None
        skipped = ""
        if config.tracemalloc == "off":
            skipped = "tracemalloc is off (tracemalloc='off'); no allocation sites"
        elif self._always is not None or _tracing():
            session = self._always or diagnosis.TracemallocSession(config.tracemalloc_frames)
        else:
            budget = self._trace_budget(sample.monotonic)
            if budget < min(_MIN_TRACE_SECONDS, length):
                skipped = (
                    f"tracemalloc skipped: the duty-cycle cap "
                    f"({config.tracemalloc_duty_cycle:.0%} of wall time) is used up"
                )
            elif not settled:
                skipped = (
                    "tracemalloc skipped: threads start and end all the time here "
                    f"({', '.join(diagnosis.other_threads()[:3])}), and on this Python stopping "
                    "tracemalloc then can crash the process (CPython gh-128679, fixed in "
                    "3.12.9 and 3.13.2); tracemalloc='always' gives allocation sites here"
                )
            else:
                length = min(length, budget)
                session = diagnosis.TracemallocSession(config.tracemalloc_frames)
        snapshot = None
        if session is not None:
            session.start()
            snapshot = session.snapshot()
        self._diag = _Diagnosis(
            started=sample.monotonic,
            deadline=sample.monotonic + length,
            census=census,
            session=session,
            snapshot=snapshot,
            heap_walk=heap_walk,
            skipped=skipped,
            rss_at_start=sample.rss,
        )
        self._win_tainted = self._win_tainted or session is not None

    def _trace_budget(self, now: float) -> float:
        """Seconds tracemalloc may run now and keep its share of wall time under the cap."""
        cap = self._config.tracemalloc_duty_cycle
        uptime = max(now - self._attached, 0.0)
        return max((cap * uptime - self._traced_seconds) / (1 - cap), 0.0)

    def _finish_diagnosis(self, guard: Guard, sample: Sample, settled: bool) -> None:
        diag, self._diag = self._diag, None
        if diag is None:
            return
        sites: list[AllocationSite] = []
        traced = 0.0
        session = diag.session
        try:
            if session is not None and diag.snapshot is not None and _tracing():
                after = session.snapshot()
                sites = diagnosis.diff_snapshots(diag.snapshot, after, limit=_TOP)
                del after
            diag.snapshot = None
            begun = time.perf_counter()
            census = diagnosis.type_census()
            growing = [
                g
                for g in diagnosis.census_diff(diag.census, census, _TOP * 2)
                if not _own_type(g.type_name)
            ][:_TOP]
            chain_type = _chain_type(growing)
            site = (sites[0].filename, sites[0].lineno) if sites else None
            instance = (
                diagnosis.find_instance(chain_type, site, self.chain_seconds)
                if chain_type
                else None
            )
            heap_walk = time.perf_counter() - begun
        finally:
            if session is not None and session is not self._always:
                traced = self._stop_tracing(session, settled)
        begun = time.perf_counter()
        chain = (
            diagnosis.referrer_chain(
                instance, self.chain_depth, self.chain_seconds, skip_module=_guard_module
            )
            if instance
            else None
        )
        del instance
        heap_walk += time.perf_counter() - begun + diag.heap_walk
        with self._lock:
            episode = self._episode
            if episode is None:  # cleared while diagnosing
                return
            report = episode.report
            report.top_sites = sites
            report.growing_types = growing
            report.referrer_chain = chain
            report.chain_type = chain_type
            report.diagnosis_window_seconds = sample.monotonic - diag.started
            report.tracemalloc_seconds = traced
            report.heap_walk_seconds = heap_walk
            report.diagnosis = "done" if not diag.skipped else "done; " + diag.skipped
            report.note = _note(report, diag, sample)
            if episode.early:
                report.note = (
                    "Diagnosed at once, before the warm-up and the window rule: usage grows "
                    "fast enough to reach the limit before they could confirm it. " + report.note
                )
            report.detected_at = sample.wall
            episode.signalled_rate = report.rate_bytes_per_min
            episode.signalled_at = sample.monotonic
            final = dataclasses.replace(report)
        self._publish(guard, final, sample.monotonic)

    def _stop_tracing(self, session: TracemallocSession, settled: bool) -> float:
        """Stop ``session`` when that is safe, else on a later sample; seconds it ran."""
        traced = session.traced_seconds
        if not session.owned or settled:
            session.stop()
            self._traced_seconds += session.seconds_on
            return session.seconds_on
        # Threads started or ended just now: tracing on is safe, stopping now is not.
        self._lingering = session
        return traced

    def _publish(self, guard: Guard, report: LeakReport, now: float) -> None:
        guard.send(signals.leak_suspected, report=report)
        report_dir = self._config.report_dir
        if report_dir and now - self._last_file >= _REPORT_FILE_SECONDS:
            self._last_file = now
            write_report(report_dir, "leak", report.to_dict())

    # -- on demand, health, lifecycle ----------------------------------------------------

    def check(self, guard: Guard) -> LeakReport | None:
        """Judge the recorded floors now; the current suspicion's report, or ``None``.

        A new suspicion found here is diagnosed on the sampler thread, never on the
        caller's; its report says ``diagnosis="pending"`` until then.
        """
        with self._lock:
            if self._episode is None:
                verdict = self._judge(self._partial_window())
                latest = guard.history.latest()
                if verdict is None or latest is None:
                    return None
                self._begin(verdict, latest)
            episode = self._episode
            return None if episode is None else dataclasses.replace(episode.report)

    def diagnose_early(
        self,
        sample: Sample,
        points: Sequence[tuple[float, float, float]],
        least_trace: float = 0.0,
        most_seconds: float | None = None,
    ) -> bool:
        """Suspect a leak now and diagnose it from the next sample, before the warm-up.

        For growth that leaves no time for the warm-up and the window rule (the recycling
        policy asks). ``points`` are recent ``(t, rss, heap blocks)`` readings, for the
        rate. The diagnosis keeps to the tracemalloc duty cycle: while it allows less than
        ``least_trace`` seconds this returns ``False`` and nothing starts (ask again later).
        ``most_seconds`` shortens the window (it must end before the process goes). True
        once a suspicion exists, whoever started it.
        """
        with self._lock:
            if self._episode is not None:
                return True
            if not self.can_diagnose_early(sample.monotonic, least_trace):
                return False
            self._begin(_early_verdict(points), sample)
            assert self._episode is not None
            self._episode.early = True
            self._episode.most_seconds = most_seconds
        return True

    @property
    def diagnosing(self) -> bool:
        """Whether a diagnosis window is open or about to open."""
        episode = self._episode
        return self._diag is not None or bool(episode and episode.diagnose)

    def can_diagnose_early(self, now: float, least_trace: float) -> bool:
        """Whether the duty cycle allows ``least_trace`` seconds of tracemalloc at ``now``
        (always when tracemalloc is off, or already on for the host or ``always``)."""
        if self._config.tracemalloc == "off" or self._always is not None:
            return True
        return _tracing() or self._trace_budget(now) >= least_trace

    def finish_diagnosis(self, guard: Guard, sample: Sample) -> None:
        """End an open diagnosis window now (the process is about to go) and report it."""
        if self._diag is not None:
            self._finish_diagnosis(guard, sample, self._settled())

    def current_report(self) -> LeakReport | None:
        """A copy of the current suspicion's report, diagnosed or not; ``None`` without one."""
        with self._lock:
            episode = self._episode
            return None if episode is None else dataclasses.replace(episode.report)

    def _partial_window(self) -> tuple[float, float, float] | None:
        """The open window as a floor, once it spans half a window (for :meth:`check`)."""
        start = self._win_start
        if start is None or self._win_tainted:
            return None
        now = self._clock()
        latest = self._latest
        if latest is not None:
            now = latest
        if now - start < self._config.leak_window / 2:
            return None
        return (now, self._win_heap, self._win_rss)

    def health(self, guard: Guard) -> dict[str, Any]:
        episode = self._episode
        return {"suspected_leaks": [] if episode is None else [episode.report.to_dict()]}

    def after_fork(self, guard: Guard) -> None:
        # The child inherits tracemalloc as the parent left it; a window the parent opened
        # is the child's to close (safe: the child has one thread), and the parent's floors
        # describe another process.
        diag = self._diag
        for session in (diag.session if diag is not None else None, self._lingering):
            if session is not None and session is not self._always:
                session.stop()
        self._reset()

    def close(self, guard: Guard) -> None:
        diag, self._diag = self._diag, None
        if diag is not None and diag.session is not None and diag.session is not self._always:
            self._stop_tracing(diag.session, diagnosis.stop_is_safe())
        for session in (self._lingering, self._always):
            if session is not None and session.owned and not diagnosis.stop_is_safe():
                _log.warning(
                    "runtime_guard: tracemalloc left on: stopping it while other threads "
                    "run can crash this Python (CPython gh-128679)"
                )
            elif session is not None:
                session.stop()
        self._lingering = self._always = None


def _early_verdict(points: Sequence[tuple[float, float, float]]) -> _Verdict:
    """The rates of ``(t, rss, heap blocks)`` points, judged as :meth:`LeakDetector._judge`
    judges floors: the heap's growth when the heap can explain RSS's, else RSS's."""
    if len(points) > _EARLY_POINTS:
        step = len(points) / _EARLY_POINTS
        points = [points[int(i * step)] for i in range(_EARLY_POINTS - 1)] + [points[-1]]
    minutes = [t / 60.0 for t, _, _ in points]
    rss_rate = theil_sen(list(zip(minutes, [r for _, r, _ in points], strict=True)))
    heap_rate = theil_sen(list(zip(minutes, [h for _, _, h in points], strict=True)))
    duration = points[-1][0] - points[0][0] if points else 0.0
    if heap_rate > 0 and heap_rate * _MAX_BLOCK >= rss_rate:
        rate = max(rss_rate, heap_rate * _BYTES_PER_BLOCK)
        return _Verdict("heap", rate, heap_rate, rss_rate, duration)
    return _Verdict("rss", max(rss_rate, 0.0), heap_rate, rss_rate, duration)


def _rising_run(values: list[float], min_step: float) -> int:
    """How many of the last steps in a row rose by more than ``min_step`` (for durations)."""
    run = 0
    for i in range(len(values) - 1, 0, -1):
        if values[i] - values[i - 1] > min_step:
            run += 1
        else:
            break
    return run


def _own_type(name: str) -> bool:
    return name.startswith("runtime_guard.")


def _guard_module(name: str) -> bool:
    """Whether module ``name`` is this package's: never where a leak's holder chain starts.

    The instance a diagnosis explains is a recent one of the growing type; for a builtin
    type with no instance traced to the top site, the newest one may be the guard's own
    (the ``__all__`` of a module the diagnosis imported lazily), which explains nothing.
    """
    return name == "runtime_guard" or name.startswith("runtime_guard.")


def _chain_type(growing: list[TypeGrowth]) -> str | None:
    """The type to explain: the fastest-growing one, preferring a class the code defines.

    A recent ``dict`` or ``list`` could be anyone's, so a defined class growing at least a
    quarter as fast wins over a builtin; with the top site known, the instance search then
    picks one allocated there anyway. A handful of new objects explains nothing.
    """
    growing = [g for g in growing if g.growth >= _MIN_CHAIN_GROWTH]
    if not growing:
        return None
    top = growing[0]
    for growth in growing:
        defined = "." in growth.type_name and not growth.type_name.startswith("weakref.")
        if defined and growth.growth * 4 >= top.growth:
            return growth.type_name
    return top.type_name


def _note(report: LeakReport, diag: _Diagnosis, sample: Sample) -> str:
    parts: list[str] = []
    traced = sum(site.size_diff for site in report.top_sites)
    if report.metric == "heap":
        parts.append(
            "The Python heap's floor (sys.getallocatedblocks() after collections) rose in "
            "every recent window."
        )
    else:
        # What RSS gained in the window, or what the judged rate says it should have: a
        # process that freed memory before can grow by reusing it without RSS moving.
        window = sample.monotonic - diag.started
        grown = max(sample.rss - diag.rss_at_start, report.rss_bytes_per_min * window / 60)
        unread = _interpreter.HEAP_BLOCKS_UNREAD
        if unread is not None:
            parts.append(
                f"RSS grows; the Python small-object heap cannot be read here ({unread}), "
                "so the growth may be Python objects as well as large buffers, native "
                "memory or fragmentation."
            )
        else:
            parts.append(
                "Only RSS grows; the Python small-object heap is flat. The growth is in large "
                "Python buffers, native memory (a C extension or library allocator) or "
                "fragmentation."
            )
        if diag.session is None:
            pass
        elif traced and traced * 4 >= max(grown, 1):
            parts.append(
                f"tracemalloc attributes {format_size(traced)} of it to the Python allocations "
                "below."
            )
        else:
            parts.append(
                "tracemalloc and the type census cannot attribute it: it is not made through "
                "Python's allocators (look at C extensions, or compare with malloc_trim or "
                "jemalloc to tell fragmentation from a leak)."
            )
    if diag.skipped:
        parts.append(diag.skipped + ".")
    return " ".join(parts)


def _median(values: list[float]) -> float:
    # statistics.median, without importing statistics with every worker's guard.
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _tracing() -> bool:
    # The built-in _tracemalloc answers without importing tracemalloc (and pickle) into
    # every worker; tracing may have been started by -X tracemalloc, with no module.
    return bool(_tracemalloc.is_tracing())
