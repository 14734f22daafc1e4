"""Growth-leak detection on post-GC baselines, and the report that explains a suspicion.

The :class:`LeakDetector` component reads only what every sample already carries: the
Python heap (``sys.getallocatedblocks()``) and the process's RSS. Per window of
``leak_window`` seconds it keeps their minima, the floor they return to after each
collection, which temporary allocations, a sawtooth or a burst cannot raise. A leak is a
floor that rose in every one of the last ``leak_confirm`` windows (CPython's ``-R`` rule)
at a Theil-Sen rate of at least ``leak_min_rate``. A cache that plateaus or a one-off step
(a lazy import, a pool filling up) rises once or twice and then stops, so it never passes.

The heap figure counts blocks, not bytes: a 100 KB ``bytes`` is one block. Large objects
show in RSS instead, as native memory does, and only the diagnosis tells them apart:
tracemalloc traces every Python allocation, of any size, so a window whose traced total
grows with RSS is a Python-heap leak with a line, and one whose traced total stays flat
while RSS grows is native memory. (glibc's ``mallinfo2()`` would give malloc's bytes every
sample, but it walks every free chunk: 38 ms on a fragmented 200 MB heap, measured here.)

After a suspicion the detector opens one diagnosis window on the sampler thread
(:mod:`~runtime_guard.leaks.window`): tracemalloc for a few seconds, the user's lines that
kept memory, the collection that holds it and its retained size, and the routes whose
requests leave memory behind (:mod:`~runtime_guard.leaks.routes`). Then it sends
``signals.leak_suspected`` with a :class:`LeakReport`, once per episode, and again only if
the rate changes materially or after ``leak_repeat_after`` seconds. tracemalloc's share of
wall time is capped (``tracemalloc_duty_cycle``), except for the first diagnosis of each
suspicion and for diagnoses asked for on demand (:meth:`LeakDetector.diagnose`): a report
always carries its sites, or says exactly why it cannot.
"""

from __future__ import annotations

import _tracemalloc
import contextlib
import dataclasses
import itertools
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime_guard import _frames, _interpreter, diagnosis, relief, signals
from runtime_guard._component import Component
from runtime_guard._trend import median, sustained_growth, theil_sen
from runtime_guard._units import format_duration, format_size
from runtime_guard.config import ConfigError
from runtime_guard.leaks import routes as _routes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from runtime_guard.config import Config
    from runtime_guard.diagnosis.holders import Found
    from runtime_guard.diagnosis.tracing import TracemallocSession
    from runtime_guard.guard import Clock, Guard
    from runtime_guard.leaks.report import Holder, LeakReport
    from runtime_guard.leaks.window import Conclusion, Window
    from runtime_guard.sample import Sample

__all__ = []

_log = logging.getLogger("runtime_guard")

# Mean size of a small allocation in a typical CPython heap (measured here: tracemalloc over
# the stdlib, blinker and a few thousand application objects gave 83 bytes per block). It
# turns a heap-block rate into bytes when RSS does not grow with the heap (freed memory
# reused); when RSS grows too its own, measured rate is used.
_BYTES_PER_BLOCK = 80


def _heap_explains(heap_rate: float, rss_rate: float) -> bool:
    """Whether the small-object heap's growth explains a quarter or more of what RSS gains.

    Then the heap is the figure to judge (its blocks are Python objects the diagnosis can
    name); under that, large objects or native memory grow, and RSS is.
    """
    return heap_rate * _BYTES_PER_BLOCK * 4 >= rss_rate


# A floor counts as risen in a window only by more than this share of the minimum rate's
# per-window step. Below it is creep, not growth: pages of RSS noise, and the guard's own
# history filling during its first hour (about 140 heap blocks per 10 s window, measured),
# which beside a one-off step spread over two windows would otherwise pass the N-window rule.
_MIN_STEP_SHARE = 0.5

# A rate this much higher or lower (as a ratio) than the one last signalled is a material
# change and is reported again.
_MATERIAL_CHANGE = 1.5

# Leak report files are written at most this often, whatever the number of episodes;
# reports asked for on demand are always written.
_REPORT_FILE_SECONDS = 300.0

# Samples a diagnosis waits for a moment when no thread starts or ends (CPython gh-128679)
# before it goes on without tracemalloc.
_SETTLE_SAMPLES = 10

# A tracemalloc window shorter than this shows too little growth to be worth its cost.
_MIN_TRACE_SECONDS = 1.0

# Points an early verdict's Theil-Sen rates are computed from at most (quadratic cost).
_EARLY_POINTS = 30

# tracemalloc explains the growth when what it saw kept is at least this share of RSS's
# growth; below a tenth it is native memory. In between both grow, and Python's part has
# its line.
_PYTHON_SHARE = 0.25
_NATIVE_SHARE = 0.10

# Samples of cumulative route counts kept for the regression (a quarter of an hour at 1 s).
_ROUTE_POINTS = 900

# A holder confirms a leak when it grew by at least this share of the entries its line
# allocated (a leak keeps all of them; an LRU at its bound keeps none), watched until a few
# entries were due. Unconfirmed, the detector looks again after a back-off of this many
# windows (doubling), past the holders that did not grow.
# The regression's top route needs this many requests behind it to overrule tracemalloc's.
_ROUTE_REGRESSION_REQUESTS = 200

_CONFIRM_SHARE = 0.3
_CONFIRM_ENTRIES = 6
_YOUNG = 0.5
# Traced bytes kept a minute against the floors' rate, above which the holder is watched as
# long as a young one. Measured on 30 leaking servers (ten shapes under gunicorn sync,
# gthread and uvicorn): 1.2 to 1.8. A batch flushed every 25 s, seen while RSS crept in a
# young gthread worker: 7.7.
_TRANSIENT_RATIO = 4.0
_NO_HOLDER_TRIES = 3
_RETRY_WINDOWS = 3


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
    diagnosed: int = 0
    signalled_rate: float | None = None
    signalled_at: float | None = None
    negatives: int = 0
    published: bool = False
    unconfirmed: int = 0
    """Diagnoses whose holder did not grow while the line kept allocating into it."""
    retry_at: float | None = None
    avoid: set[int] = field(default_factory=set)
    """``id()`` of holders that did not grow: the next search looks past them."""
    early: bool = False
    """Begun by :meth:`LeakDetector.diagnose_early`, before the warm-up and window rule."""
    most_seconds: float | None = None
    """The longest diagnosis window that ends before the process goes."""


@dataclass
class _Confirmation:
    """A diagnosed holder watched for a few samples: a leak's holder grows with what its
    line allocates; a bounded cache's (an LRU evicting as it inserts) does not."""

    holder: object
    entries: int
    started: float
    """Monotonic time of the first look (-1 before it)."""
    decide_at: float
    """Seconds to watch, then the time to decide once the first look was taken."""
    expected_per_second: float
    report: LeakReport
    lowest: int


@dataclass
class _Request:
    """A diagnosis asked for on demand, and whoever waits for its report."""

    reason: str
    done: threading.Event = field(default_factory=threading.Event)
    report: LeakReport | None = None


class LeakDetector(Component):
    """Watches the heap and RSS floors for sustained growth; diagnoses and reports leaks."""

    name = "leaks"

    chain_depth = 8
    """Links the backwards referrer-chain search (the last resort) follows at most."""
    chain_seconds = 0.5
    """Seconds the holder search may take (pauses for other threads excluded)."""
    size_seconds = 0.3
    """Seconds the holder's sizing may take, about."""

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
        self._diag: Window | None = None
        self._diag_requests: list[_Request] = []
        self._requests: list[_Request] = []
        self._confirm: _Confirmation | None = None
        self._traced_seconds = 0.0
        self._lingering: TracemallocSession | None = None
        self._threads: frozenset[int] | None = None
        self._settle_waits = 0
        self._last_file = float("-inf")
        self._start_figures: tuple[float, float, int] | None = None
        # Cumulative requests per route beside each sample: (time, heap, rss, counts).
        self._route_names: list[str] = []
        self._route_points: deque[tuple[float, float, float, tuple[int, ...]]] = deque(
            maxlen=_ROUTE_POINTS
        )
        _routes.TRACING = False

    # -- the cheap part: every sample ----------------------------------------------------

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        now = sample.monotonic
        self._latest = now
        if self._start_figures is None:
            self._start_figures = (now, float(sample.heap_blocks), sample.rss)
        self._record_routes(sample)
        if self._confirm is not None:
            self._check_confirmation(guard, sample)
        episode = self._episode
        asked = bool(self._requests)
        looked = (
            self._diag is not None
            or self._lingering is not None
            or bool(episode and episode.diagnose)
            or asked
        )
        settled = self._settled() if looked else True
        if self._lingering is not None and settled:
            self._lingering.stop()
            self._traced_seconds += self._lingering.seconds_on
            self._lingering = None
        if self._diag is not None:
            self._win_tainted = self._win_tainted or self._diag.session is not None
            if self._diag.enough(now):
                self._finish_diagnosis(guard, sample, settled)
        if self._first is None:
            self._first = now
        if now >= self._first + self._config.leak_warmup:
            if self._win_start is None:
                self._open_window(now, sample)
            elif now >= self._win_start + self._config.leak_window:
                if not self._win_tainted:
                    self._floors.append((now, self._win_heap, self._win_rss))
                self._open_window(now, sample)
                self._window_closed(guard, sample)
            else:
                self._win_heap = min(self._win_heap, sample.heap_blocks)
                self._win_rss = min(self._win_rss, sample.rss)
        if self._diag is not None or (self._confirm is not None and not self._requests):
            return
        episode = self._episode
        wanted = episode is not None and episode.diagnose and self._confirm is None
        if not (wanted or self._requests):
            return
        if not looked:  # the suspicion is this sample's own
            settled = self._settled()
        if not settled and self._settle_waits < _SETTLE_SAMPLES:
            self._settle_waits += 1  # wait for a sample with the same threads as the last
            return
        self._settle_waits = 0
        with self._lock:
            requests, self._requests = self._requests, []
        first = False
        if episode is not None and wanted:
            episode.diagnose = False
            # The first report of a leak traces whatever the duty cycle says; looking again
            # (a holder that did not grow, a changed rate) stays within it.
            first = episode.diagnosed == 0
            episode.diagnosed += 1
        reason = requests[0].reason if requests and not wanted else "growth"
        self._start_diagnosis(
            sample, settled, reason, first or bool(requests), requests, retry=wanted and not first
        )
        if self._diag is not None and episode is not None:
            self._diag.avoid = set(episode.avoid)

    def _record_routes(self, sample: Sample) -> None:
        counts = _routes.counts()
        counts.fold()
        totals = counts.totals
        if not totals:
            return
        names = self._route_names
        if len(totals) > len(names):
            names.extend(name for name in totals if name not in names)
        self._route_points.append(
            (
                sample.monotonic,
                sample.heap_blocks * float(_BYTES_PER_BLOCK),
                float(sample.rss),
                tuple(totals.get(name, 0) for name in names),
            )
        )

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
            if self._diag is not None or self._confirm is not None or episode.diagnose:
                return
            if episode.retry_at is not None:
                if sample.monotonic >= episode.retry_at:
                    episode.retry_at = None
                    episode.diagnose = True
                return
            if not episode.published:
                return
            if episode.signalled_rate is None:
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
            if median(steps) * scale < per_window:
                continue
            run = _rising_run(values, per_window * _MIN_STEP_SHARE / scale)
            # The rate comes from the recent floors only, so a change of rate shows within
            # a few windows; the duration from the whole rising run.
            first = len(floors) - run - 1
            recent = max(first, len(floors) - (2 * n + 1))
            heap_rate = theil_sen(list(zip(times[recent:], heap[recent:], strict=True)))
            rss_rate = theil_sen(list(zip(times[recent:], rss[recent:], strict=True)))
            if metric == "heap" and not _heap_explains(heap_rate, rss_rate):
                continue  # RSS is the figure to judge, below
            own_rate = heap_rate * _BYTES_PER_BLOCK if metric == "heap" else rss_rate
            if own_rate < min_rate:
                continue
            rate = max(rss_rate, own_rate)
            duration = (times[-1] - times[first]) * 60.0
            return _Verdict(metric, rate, heap_rate, rss_rate, duration)
        return None

    def _begin(self, verdict: _Verdict, sample: Sample) -> None:
        from runtime_guard.leaks.report import LeakReport

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

    def _start_diagnosis(
        self,
        sample: Sample,
        settled: bool,
        reason: str,
        first: bool,
        requests: list[_Request],
        *,
        retry: bool = False,
    ) -> None:
        """Open a window. The first diagnosis of a suspicion and one asked for on demand
        trace whatever the duty cycle says; repeats trace only within it. A repeat
        (``retry``: a holder that did not grow, a changed rate) with no budget left waits
        for it: without tracemalloc it could not confirm a holder, and a report without
        the sites the first one had is noise."""
        from runtime_guard.leaks.window import MIN_SECONDS, Window

        config = self._config
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
        elif not settled:
            skipped = (
                "tracemalloc skipped: threads start and end all the time here "
                f"({', '.join(diagnosis.other_threads()[:3])}), and on this Python stopping "
                "tracemalloc then can crash the process (CPython gh-128679, fixed in "
                "3.12.9 and 3.13.2); tracemalloc='always' gives allocation sites here"
            )
        else:
            budget = self._trace_budget(sample.monotonic)
            if first or budget >= min(_MIN_TRACE_SECONDS, length):
                if not first:
                    length = min(length, budget)
                session = diagnosis.TracemallocSession(config.tracemalloc_frames)
            elif retry:
                episode = self._episode
                if episode is not None:
                    episode.retry_at = sample.monotonic + self._config.leak_window
                    episode.diagnosed -= 1
                return
            else:
                skipped = (
                    f"tracemalloc skipped for this repeat: the duty-cycle cap "
                    f"({config.tracemalloc_duty_cycle:.0%} of wall time) is used up; the "
                    "first report of this leak has its sites"
                )
        window = Window(
            started=sample.monotonic,
            min_end=sample.monotonic + min(MIN_SECONDS, length),
            max_end=sample.monotonic + length,
            reason=reason,
            rss_at_start=sample.rss,
            skipped=skipped,
        )
        if session is not None:
            host = _tracing()
            with window.step("start"):
                session.start()
                if host:  # what the host traced before the window is not growth
                    window.baseline = session.snapshot()
            window.session = session
            window.traced_at_start = int(_tracemalloc.get_traced_memory()[0])
            _routes.counts().start_tracing()
            _routes.TRACING = True
        else:
            with window.step("census"):
                window.census = diagnosis.type_census()
        self._diag = window
        self._diag_requests = requests
        self._win_tainted = self._win_tainted or session is not None

    def _trace_budget(self, now: float) -> float:
        """Seconds tracemalloc may run now and keep its share of wall time under the cap."""
        cap = self._config.tracemalloc_duty_cycle
        uptime = max(now - self._attached, 0.0)
        return max((cap * uptime - self._traced_seconds) / (1 - cap), 0.0)

    def _finish_diagnosis(self, guard: Guard, sample: Sample, settled: bool) -> None:
        from runtime_guard.leaks.window import conclude

        window, self._diag = self._diag, None
        requests, self._diag_requests = self._diag_requests, []
        _routes.TRACING = False
        _routes.EPOCH += 1  # requests in flight now overlap the diagnosis's own work
        if window is None:
            return
        begun = time.perf_counter()
        session = window.session
        traced = 0.0
        with _yielding():
            try:
                found = conclude(
                    window,
                    search_seconds=self.chain_seconds,
                    chain_depth=self.chain_depth,
                    own_type=_own_type,
                )
            finally:
                if session is not None and session is not self._always:
                    traced = self._stop_tracing(session, settled)
                    if session.seconds_on > 0 and self._lingering is not session:
                        # tracemalloc's tables are freed now; hand them back to the OS, or
                        # the next floors would rise by the guard's own diagnosis.
                        with window.step("trim"):
                            relief.trim()
            _routes.counts().fold()
            route_traced = dict(_routes.counts().traced) if session is not None else None
            holder, svg = self._size_holder(found.found, window)
        chain = found.found.links if found.found is not None else found.chain
        elapsed = sample.monotonic - window.started
        with self._lock:
            episode = self._episode
            if episode is None and window.reason == "growth":
                return  # cleared while diagnosing
            report = episode.report if episode is not None else self._since_start(sample)
            report.top_sites = found.sites
            report.growing_types = found.growing_types
            report.referrer_chain = chain
            report.chain_type = (
                found.chain_type
                if found.chain_type is not None
                else (holder.item_type if holder is not None else None)
            )
            report.holder = holder
            report.holder_svg = svg
            report.routes = self._rank_routes(route_traced)
            report.diagnosis_window_seconds = elapsed
            report.tracemalloc_seconds = traced
            report.heap_walk_seconds = time.perf_counter() - begun + window.steps.get("census", 0.0)
            report.longest_step_seconds = found.longest_step
            report.steps = dict(window.steps)
            report.reason = window.reason
            if found.traced_growth is not None and elapsed > 0:
                report.traced_bytes_per_min = found.traced_growth / elapsed * 60.0
            else:
                report.traced_bytes_per_min = None
            report.origin = _origin(report, found, window, sample)
            report.diagnosis = "done" if not window.skipped else "done; " + window.skipped
            report.note = _note(report, found, window, sample)
            if episode is not None and episode.early:
                report.note = (
                    "Diagnosed at once, before the warm-up and the window rule: usage grows "
                    "fast enough to reach the limit before they could confirm it. " + report.note
                )
            report.detected_at = sample.wall
            final = dataclasses.replace(report)
            watch = None
            if episode is not None and window.reason == "growth" and not requests:
                watch = self._watch(found, final, window, sample)
                if (
                    watch is None
                    and found.found is None
                    and report.origin == "python"
                    and not episode.published
                    and episode.unconfirmed < _NO_HOLDER_TRIES
                    and (
                        episode.unconfirmed > 0
                        or not (report.top_sites and _frames.is_user(report.top_sites[0].filename))
                    )
                ):
                    # Nothing of the user's holds what was kept, and either a library's code
                    # kept it (a server's or framework's caches refilling in a young process)
                    # or the holder found before did not grow (an LRU at its bound). No
                    # report yet; if the growth goes on, the next looks decide (and after a
                    # few, the report goes out with its sites and without a holder).
                    self._retry_later(episode, sample, "no holder of the growth found")
                    return
            if watch is not None:
                self._confirm = watch
                return
            if episode is not None and window.reason == "growth":
                self._signalled(episode, final, sample)
        self._publish(guard, final, sample.monotonic, force=window.reason != "growth")
        for request in requests:
            request.report = final
            request.done.set()

    def _signalled(self, episode: _Episode, report: LeakReport, sample: Sample) -> None:
        episode.signalled_rate = report.rate_bytes_per_min
        episode.signalled_at = sample.monotonic
        episode.published = True

    def _watch(
        self, found: Conclusion, report: LeakReport, window: Window, sample: Sample
    ) -> _Confirmation | None:
        """Watch the holder before reporting, when the report rests on it: a Python-heap
        leak whose holder is a container of known size per entry."""
        holder = report.holder
        if (
            found.found is None
            or holder is None
            or report.origin != "python"
            or not report.top_sites
            or holder.entries is None
        ):
            return None
        seconds = max(sample.monotonic - window.started, 1e-3)
        top = report.top_sites[0]
        if holder.retained_bytes and holder.entries:
            expected = top.size_diff / seconds / max(holder.retained_bytes / holder.entries, 1.0)
        else:  # no size: an entry per block allocated at the line, at most
            expected = top.count_diff / seconds
        if expected <= 0:
            return None
        # Half a window at least (an LRU at its bound shows at once), longer when entries
        # come slowly, so that several are due. A holder whose entries are mostly new (made
        # in the diagnosis window) may be a batch flushed now and then, growing for a while
        # like a leak: it is watched three windows, long enough to see a flush. A leak's
        # holder has been growing for as long as the floors rose: most of its entries are old.
        # So too when the window saw Python code keep far more than the floors rose by: what
        # it saw kept is mostly transient (a batch filling before its flush, while the floors
        # crept for another reason), where a leak's traced rate is close to its floors' rate.
        window_seconds = self._config.leak_window
        traced = report.traced_bytes_per_min
        transient = traced is not None and traced > _TRANSIENT_RATIO * report.rate_bytes_per_min
        young = (found.young or 0.0) > _YOUNG
        least = 3 * window_seconds if young or transient else window_seconds / 2
        wait = min(
            max(_CONFIRM_ENTRIES / expected, 2 * self._config.interval, least),
            3 * window_seconds,
        )
        # Counted from the next sample on: the sizing and the picture took time since this
        # one, while the holder kept growing.
        return _Confirmation(
            holder=found.found.path[found.found.holder],
            entries=-1,
            started=-1.0,
            decide_at=wait,
            expected_per_second=expected,
            report=report,
            lowest=-1,
        )

    def _retry_later(self, episode: _Episode, sample: Sample, why: str) -> None:
        """Leave a growth unreported for now, and diagnose it again after a back-off."""
        episode.unconfirmed += 1
        windows = _RETRY_WINDOWS * 2 ** min(episode.unconfirmed - 1, 6)
        seconds = windows * self._config.leak_window
        episode.retry_at = sample.monotonic + seconds
        _log.info("runtime_guard: growth not confirmed: %s; looking again in %.0f s", why, seconds)

    def _check_confirmation(self, guard: Guard, sample: Sample) -> None:
        watch = self._confirm
        assert watch is not None
        from runtime_guard.diagnosis.holders import entries_of

        entries = entries_of(watch.holder)
        if entries is None:
            entries = -1
        if watch.started < 0:  # the first look: where the growth is counted from
            watch.started, watch.entries, watch.lowest = sample.monotonic, entries, entries
            watch.decide_at += sample.monotonic
            return
        watch.lowest = min(watch.lowest, entries)
        shrank = entries < watch.entries or watch.lowest < watch.entries
        if sample.monotonic < watch.decide_at and not shrank:
            return
        self._confirm = None
        holder_id = id(watch.holder)
        watch.holder = None
        elapsed = max(sample.monotonic - watch.started, 1e-3)
        per_second = (entries - watch.entries) / elapsed
        report = watch.report
        if report.holder is not None:
            report.holder.entries_per_min = per_second * 60.0
        # It must also grow fast enough to be a leak on its own: a cache still filling at
        # a few entries a minute is not one, however steadily it fills.
        per_entry = (
            report.holder.retained_bytes / max(report.holder.entries or 1, 1)
            if report.holder is not None and report.holder.retained_bytes
            else 0.0
        )
        confirmed = (
            not shrank
            and per_second >= _CONFIRM_SHARE * watch.expected_per_second
            and (not per_entry or per_second * per_entry * 60.0 >= self._config.leak_min_rate)
        )
        with self._lock:
            episode = self._episode
            if episode is None:
                return
            if not confirmed:
                episode.avoid.add(holder_id)
                self._retry_later(
                    episode,
                    sample,
                    f"{report.holder.path if report.holder is not None else '?'} kept "
                    f"{entries} entries ({per_second:+.1f}/s) while "
                    f"{report.top_sites[0].location} allocated about "
                    f"{watch.expected_per_second:.1f}/s for it",
                )
                return
            episode.report.holder = report.holder
            report.detected_at = sample.wall  # when it is reported, after the watch
            self._signalled(episode, report, sample)
        self._publish(guard, report, sample.monotonic, force=False)

    def _size_holder(self, found: Found | None, window: Window) -> tuple[Holder | None, str | None]:
        """The holder's path, deep size and picture (tracemalloc is off by now)."""
        if found is None:
            return None, None
        from runtime_guard.diagnosis.sizing import retained_size
        from runtime_guard.leaks.report import Holder
        from runtime_guard.leaks.window import describe_found, pause

        target = found.path[found.holder]
        kinds = describe_found(found)
        with window.step("size"):
            size = retained_size(
                target, above=found.path[: found.holder], seconds=self.size_seconds, pause=pause
            )
        holder = Holder(
            path=found.expression,
            type_name=kinds["type_name"],
            item_type=kinds["item_type"],
            entries=size.entries if size is not None else None,
            retained_bytes=size.bytes if size is not None else None,
            sampled=size.sampled if size is not None else 0,
        )
        svg = None
        try:
            from runtime_guard.diagnosis.graph import chain_svg

            label = str(holder).split(": ", 1)[-1] if holder.retained_bytes is not None else ""
            pause()
            with window.step("graph"):
                svg = chain_svg(found.path[1:], {id(target): label})
        except Exception:  # no picture is no reason to lose the report
            _log.debug("runtime_guard: no chain picture", exc_info=True)
        return holder, svg

    def _rank_routes(self, traced: dict[str, list[int]] | None) -> list[_routes.RouteGrowth]:
        by_trace = _routes.rank((), (), traced) if traced else []
        return _routes.choose(
            by_trace, self._regression(), least_requests=_ROUTE_REGRESSION_REQUESTS
        )

    def _regression(self) -> list[_routes.RouteGrowth]:
        # RSS takes every allocation, small and large, and the samples of the warm-up go:
        # a young process's caches and arenas grow with all its traffic alike, which the
        # regression would pin on whichever route happened to be busiest (measured: with
        # them, the leaking route came first in 1 of 5 stretches under a minute; without,
        # in every one, within 10 % of its true bytes per request).
        first = self._first if self._first is not None else float("-inf")
        settled = first + self._config.leak_warmup
        points = [(t, rss, counts) for t, _, rss, counts in self._route_points if t >= settled]
        if len(points) < 10:
            points = [(t, rss, counts) for t, _, rss, counts in self._route_points]
        return _routes.rank(points, list(self._route_names))

    def _since_start(self, sample: Sample) -> LeakReport:
        """A report for a diagnosis asked for with no suspicion: the growth since start."""
        from runtime_guard.leaks.report import LeakReport

        start = self._start_figures or (sample.monotonic, float(sample.heap_blocks), sample.rss)
        minutes = max((sample.monotonic - start[0]) / 60.0, 1e-9)
        heap_rate = (sample.heap_blocks - start[1]) / minutes
        rss_rate = (sample.rss - start[2]) / minutes
        metric = "heap" if rss_rate > 0 and _heap_explains(heap_rate, rss_rate) else "rss"
        rate = max(rss_rate, heap_rate * _BYTES_PER_BLOCK, 0.0)
        return LeakReport(
            metric=metric,
            rate_bytes_per_min=rate,
            heap_blocks_per_min=heap_rate,
            rss_bytes_per_min=rss_rate,
            duration_seconds=sample.monotonic - start[0],
            time_to_limit_seconds=self._time_to_limit(rate, sample),
            usage_bytes=sample.usage,
            limit_bytes=sample.limit,
            detected_at=sample.wall,
        )

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

    def _publish(self, guard: Guard, report: LeakReport, now: float, force: bool) -> None:
        from runtime_guard.reports.files import write_report

        report_dir = self._config.report_dir
        if report_dir and (force or now - self._last_file >= _REPORT_FILE_SECONDS):
            self._last_file = now
            report.path = write_report(report_dir, "leak", report.to_dict())
        # The report itself is logged by the guard's event log, at ERROR, with its fields.
        if report.path:
            _log.warning("runtime_guard: leak report written to %s", report.path)
        guard.send(signals.leak_suspected, report=report)

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

    def request(self, reason: str) -> threading.Event:
        """Ask for a diagnosis at the next sample; the event is set once its report is out.

        Never blocks: for a signal handler or a request handler. The report is written to
        ``report_dir`` whatever the rate limit, and logged with its path.
        """
        request = _Request(reason)
        with self._lock:
            self._requests.append(request)
        return request.done

    def diagnose(
        self, guard: Guard, reason: str = "on demand", timeout: float | None = None
    ) -> LeakReport | None:
        """Diagnose now and return the report (written to ``report_dir``, and logged).

        The window runs on the sampler thread as for a suspicion, with tracemalloc whatever
        the duty cycle says; this call waits for it, up to ``timeout`` seconds (by default
        the diagnosis window plus ten). Without a running sampler (or called from it) there
        is no window: the report then says what grew since start and which routes grew it,
        without sites. Returns None only if the guard has taken no sample at all.
        """
        request = _Request(reason)
        if _sampler_running() and threading.current_thread().name != "runtime-guard":
            with self._lock:
                self._requests.append(request)
            wait = self._config.leak_diagnosis_window + 10.0 if timeout is None else timeout
            if request.done.wait(wait):
                return request.report
            with self._lock:
                if request in self._requests:
                    self._requests.remove(request)
        latest = guard.history.latest()
        if latest is None:
            return None
        with self._lock:
            episode = self._episode
            report = dataclasses.replace(
                episode.report if episode is not None else self._since_start(latest)
            )
        report.reason = reason
        report.routes = self._rank_routes(None)
        report.diagnosis = (
            report.diagnosis
            if report.top_sites
            else "no window: the sampler did not run one in time; no allocation sites"
        )
        report.detected_at = latest.wall
        self._publish(guard, report, latest.monotonic, force=True)
        return report

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
        if episode is None or (episode.unconfirmed and not episode.published):
            # A growth whose holder did not grow is not a leak anyone should act on yet.
            return {"suspected_leaks": []}
        data = episode.report.to_dict()
        data.pop("holder_svg", None)  # a picture is for the report page, not health
        return {"suspected_leaks": [data]}

    def after_fork(self, guard: Guard) -> None:
        # The child inherits tracemalloc as the parent left it; a window the parent opened
        # is the child's to close (safe: the child has one thread), and the parent's floors
        # and route counts describe another process.
        diag = self._diag
        for session in (diag.session if diag is not None else None, self._lingering):
            if session is not None and session is not self._always:
                session.stop()
        _routes.counts().clear()
        self._reset()

    def close(self, guard: Guard) -> None:
        diag, self._diag = self._diag, None
        _routes.TRACING = False
        for request in self._requests + self._diag_requests:
            request.done.set()
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


def _rising_run(values: list[float], min_step: float) -> int:
    """How many of the last steps in a row rose by more than ``min_step`` (for durations)."""
    run = 0
    for i in range(len(values) - 1, 0, -1):
        if values[i] - values[i - 1] > min_step:
            run += 1
        else:
            break
    return run


# The GIL's switch interval while a diagnosis concludes (CPython's default is 5 ms).
_SWITCH_INTERVAL = 0.0005


@contextlib.contextmanager
def _yielding() -> Iterator[None]:
    """Hand the GIL over quickly while the diagnosis works on the sampler thread.

    A request thread that gives the GIL up for I/O waits for it back up to a switch
    interval each time while another thread computes: a request with ten such waits took
    50 ms beside the diagnosis at the default 5 ms (measured under gunicorn's sync
    worker), against 1.5 ms alone. For the half second a diagnosis concludes, the interval
    is a tenth of that, then set back to what it was.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, _SWITCH_INTERVAL))
    try:
        yield
    finally:
        if sys.getswitchinterval() == min(previous, _SWITCH_INTERVAL):
            sys.setswitchinterval(previous)


def _early_verdict(points: Sequence[tuple[float, float, float]]) -> _Verdict:
    """The rates of ``(t, rss, heap blocks)`` points, judged as :meth:`LeakDetector._judge`
    judges floors: the heap's growth when it explains a quarter of RSS's, else RSS's."""
    if len(points) > _EARLY_POINTS:
        step = len(points) / _EARLY_POINTS
        points = [points[int(i * step)] for i in range(_EARLY_POINTS - 1)] + [points[-1]]
    minutes = [t / 60.0 for t, _, _ in points]
    rss_rate = theil_sen(list(zip(minutes, [r for _, r, _ in points], strict=True)))
    heap_rate = theil_sen(list(zip(minutes, [h for _, _, h in points], strict=True)))
    duration = points[-1][0] - points[0][0] if points else 0.0
    if heap_rate > 0 and _heap_explains(heap_rate, rss_rate):
        rate = max(rss_rate, heap_rate * _BYTES_PER_BLOCK)
        return _Verdict("heap", rate, heap_rate, rss_rate, duration)
    return _Verdict("rss", max(rss_rate, 0.0), heap_rate, rss_rate, duration)


def _own_type(name: str) -> bool:
    return name.startswith("runtime_guard.")


def _sampler_running() -> bool:
    return any(t.name == "runtime-guard" and t.is_alive() for t in threading.enumerate())


def _grown(report: LeakReport, window: Window, sample: Sample) -> float:
    """What the process grew by over the window at its judged rates. Not RSS's own change
    in the window: tracemalloc's tables are in RSS too while it traces."""
    minutes = max(sample.monotonic - window.started, 0.0) / 60.0
    return max(report.rss_bytes_per_min, report.heap_blocks_per_min * _BYTES_PER_BLOCK, 0.0) * (
        minutes
    )


def _origin(report: LeakReport, found: Conclusion, window: Window, sample: Sample) -> str:
    """``"python"``, ``"native"`` or ``"unknown"``: whose allocations the growth is."""
    if found.traced_growth is None:
        return "unknown"
    traced = max(found.traced_growth, 0)
    grown = _grown(report, window, sample)
    if grown <= 0 or traced >= _PYTHON_SHARE * grown:
        return "python"
    if traced < _NATIVE_SHARE * grown:
        return "native"
    return "python"


def _note(report: LeakReport, found: Conclusion, window: Window, sample: Sample) -> str:
    """What the figures mean, with the evidence, and what the tools could not see."""
    parts: list[str] = []
    seconds = max(sample.monotonic - window.started, 0.0)
    grown = _grown(report, window, sample)
    if report.origin == "python" and found.traced_growth is not None:
        parts.append(
            f"tracemalloc saw Python code keep {format_size(max(found.traced_growth, 0))} in "
            f"{format_duration(seconds)} ({(report.traced_bytes_per_min or 0) / 1e6:.2f} "
            f"MB/min; RSS grew {report.rss_bytes_per_min / 1e6:.2f} MB/min): objects of every "
            "size made by Python code (bytes and numpy buffers included), at the lines below."
        )
        if grown > 0 and found.traced_growth < 0.5 * grown:
            parts.append(
                "RSS grows faster than what Python keeps: part of it is native memory or "
                "fragmentation."
            )
    elif report.origin == "native" and found.traced_growth is not None:
        parts.append(
            f"Native memory: RSS grew {format_size(grown)} in {format_duration(seconds)} "
            f"({report.rss_bytes_per_min / 1e6:.2f} MB/min) while tracemalloc, which sees "
            f"every Python allocation, saw only {format_size(max(found.traced_growth, 0))} "
            "kept. Look at C extensions and libraries with their own allocators, or "
            "compare with malloc_trim or jemalloc to tell fragmentation from a leak."
        )
    elif report.metric == "heap":
        parts.append(
            "The Python heap's floor (sys.getallocatedblocks() after collections) rose in "
            "every recent window."
        )
    else:
        unread = _interpreter.HEAP_BLOCKS_UNREAD
        parts.append(
            "RSS's floor rose in every recent window"
            + (f"; the Python small-object heap cannot be read here ({unread})" if unread else "")
            + ". Without tracemalloc in the diagnosis, large Python objects cannot be told "
            "from native memory."
        )
    if window.skipped:
        parts.append(window.skipped + ".")
    elif found.traced_growth is not None and not found.sites:
        parts.append("tracemalloc saw no allocation kept in the window.")
    if report.top_sites and report.holder is None and report.origin == "python":
        parts.append(
            "No holder was found from the user's modules or the application object within "
            "the search budget."
        )
    return " ".join(parts)


def _tracing() -> bool:
    # The built-in _tracemalloc answers without importing tracemalloc (and pickle) into
    # every worker; tracing may have been started by -X tracemalloc, with no module.
    return bool(_tracemalloc.is_tracing())
