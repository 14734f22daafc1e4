"""Tests of the growth-leak detector: real leaking and clean scenarios, and its judgement."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import gc
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from runtime_guard import ConfigError, LeakReport, _interpreter, diagnosis, relief, signals
from runtime_guard._install import attach_components
from runtime_guard.config import Config
from runtime_guard.diagnosis import AllocationSite, TypeGrowth, tracing
from runtime_guard.guard import Guard
from runtime_guard.leaks.detector import LeakDetector
from runtime_guard.leaks.report import MB, Holder
from runtime_guard.leaks.routes import RouteGrowth
from runtime_guard.probes import RssReader
from runtime_guard.testing import FakeProbe, make_guard

# Short windows so a scenario is judged in seconds; the defaults are for production.
_FAST: dict[str, Any] = {
    "interval": 0.05,
    "leak_window": 0.5,
    "leak_warmup": 0.4,
    "leak_confirm": 3,
    "leak_min_rate": "5MB",
    "leak_diagnosis_window": 0.8,
    "tracemalloc_duty_cycle": 0.6,
    "relief": False,
    "track_clients": False,
}


def _line_of(marker: str) -> int:
    with open(__file__, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.rstrip().endswith(marker):
                return number
    raise AssertionError(marker)


# -- leaking scenarios: each grows through one line, marked "# leak: <name>" ---------------

_LIST: list[object] = []
_CACHE: dict[str, object] = {}
_HANDLERS: list[Callable[[], object]] = []
_BUFFER = bytearray()
_NATIVE: list[int] = []


class _Node:
    __slots__ = ("children", "parent", "payload")

    def __init__(self, parent: _Node | None, payload: object) -> None:
        self.parent = parent
        self.children: list[_Node] = []
        self.payload = payload


_ROOT = _Node(None, None)


def _make_handler(data: object) -> Callable[[], object]:
    return lambda: data


def leak_list(i: int) -> None:
    for j in range(10):
        _LIST.append([i, j] * 20)  # leak: list


def leak_dict_cache(i: int) -> None:
    for j in range(10):
        _CACHE[f"request-{i}-{j}"] = {"id": j, "user": str(i) * 20}  # leak: dict


def leak_closures(i: int) -> None:
    for j in range(10):
        _HANDLERS.append(_make_handler([i, j] * 20))  # leak: closure


def leak_cycle(i: int) -> None:
    for j in range(10):
        _ROOT.children.append(_Node(_ROOT, [i, j] * 20))  # leak: cycle


def leak_buffer(i: int) -> None:
    _BUFFER.extend(b"\x01" * 4000)  # leak: buffer


_LEAKS = {
    "list": leak_list,
    "dict": leak_dict_cache,
    "closure": leak_closures,
    "cycle": leak_cycle,
    "buffer": leak_buffer,
}


@pytest.fixture(autouse=True)
def _stop_is_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    # Threads that other tests leave behind would make the detector skip tracemalloc on
    # Pythons with CPython gh-128679; this process's threads run Python code only, so the
    # scenarios run as on a fixed Python. The switch itself is tested with its own thread.
    monkeypatch.setattr(tracing, "STOP_MAY_CRASH", False)


@pytest.fixture(autouse=True)
def _drop_leaks() -> Iterator[None]:
    yield
    _LIST.clear()
    _CACHE.clear()
    _HANDLERS.clear()
    del _BUFFER[:]
    _ROOT.children.clear()
    _SAW.clear()
    _STEP.clear()
    _render.cache_clear()
    _PLATEAU.clear()
    gc.collect()


# -- clean scenarios ----------------------------------------------------------------------

_SAW: list[object] = []
_STEP: list[object] = []
_PLATEAU: dict[int, object] = {}


@functools.lru_cache(maxsize=500)
def _render(n: int) -> list[int]:
    return [n] * 40


def clean_lru_cache(i: int) -> None:
    for j in range(20):
        _render((i * 20 + j) % 3000)


def clean_plateau(i: int) -> None:
    for j in range(10):
        _PLATEAU[(i * 10 + j) % 1000] = [i, j] * 20


def clean_temporaries(i: int) -> None:
    big = bytearray(8 * 1024 * 1024)
    small = [[i, j] * 20 for j in range(2000)]
    del big, small


def clean_sawtooth(i: int) -> None:
    _SAW.extend([i, j] * 20 for j in range(50))
    if len(_SAW) >= 1500:
        _SAW.clear()


def clean_step(i: int) -> None:
    if i == 40:
        _STEP.append(bytearray(16 * 1024 * 1024))
        _STEP.extend([j] * 40 for j in range(20000))


_CLEAN = {
    "lru_cache": clean_lru_cache,
    "plateau": clean_plateau,
    "temporaries": clean_temporaries,
    "sawtooth": clean_sawtooth,
    "one_off_step": clean_step,
}


def _run(
    step: Callable[[int], None], seconds: float, stop_on_signal: bool = True, **options: Any
) -> tuple[list[LeakReport], Guard]:
    """Drive ``step`` against a real guard for ``seconds``; return the reports it signalled."""
    gc.collect()
    # Pages that earlier tests freed and glibc kept resident would absorb a buffer's growth
    # for seconds without RSS moving (an 8 MB temporary before the buffer scenario did):
    # each scenario starts from a trimmed heap, as in a process of its own.
    relief.trim()
    rss = RssReader().read()
    config = Config.from_options({**_FAST, "memory_limit": rss * 10, **options}, environ={})
    guard = Guard(config)
    attach_components(guard)
    got: list[LeakReport] = []

    def receiver(sender: Guard, report: LeakReport) -> None:
        got.append(report)

    signals.leak_suspected.connect(receiver, sender=guard)
    guard.start()
    try:
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline and not (stop_on_signal and got):
            step(i)
            i += 1
            time.sleep(0.005)
            if i % 20 == 0:
                guard.flush_signals(1.0)
        guard.flush_signals()
    finally:
        guard.stop()
        signals.leak_suspected.disconnect(receiver, sender=guard)
    return got, guard


@pytest.mark.parametrize("name", sorted(_LEAKS))
def test_leak_is_found_at_its_line(name: str) -> None:
    """Each leaking scenario is suspected and the top allocation site is its leaking line."""
    reports, _ = _run(_LEAKS[name], seconds=15)
    assert reports, f"{name}: no leak suspected"
    report = reports[0]
    top = report.top_sites[0]
    assert (top.filename, top.lineno) == (__file__, _line_of(f"# leak: {name}")), str(report)
    assert report.rate_mb_per_min >= 5
    assert report.metric == ("rss" if name == "buffer" else "heap")
    assert report.diagnosis == "done"
    assert report.tracemalloc_seconds > 0
    assert not tracemalloc.is_tracing()


def test_global_leak_has_a_referrer_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leak held by a module global names that global, through its container, in the chain."""
    monkeypatch.setattr(LeakDetector, "chain_seconds", 30.0)  # room on a loaded machine
    reports, _ = _run(leak_cycle, seconds=15)
    assert reports
    report = reports[0]
    assert report.referrer_chain is not None
    assert report.referrer_chain[0] == f"{__name__}._ROOT ({__name__}._Node)"
    assert report.holder is not None
    assert report.holder.path == f"{__name__}._ROOT.children"


def test_a_holder_chain_never_starts_in_the_guards_own_modules() -> None:
    """A recent list that only a module of the guard holds (its ``__all__``) gets no holder
    chain: the diagnosis would name the guard itself as what keeps the leak alive."""
    from runtime_guard.diagnosis import referrers

    assert diagnosis.referrer_chain(referrers.__all__) is None
    assert diagnosis.referrer_chain(referrers.__all__, skip_module=lambda name: False) is None


def test_native_leak_is_reported_as_native_with_the_evidence() -> None:
    """Memory malloc'ed by C code is reported as native: RSS grew, tracemalloc's total did not."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

    def leak_native(i: int) -> None:
        pointer = libc.malloc(8000)
        libc.memset(pointer, 1, 8000)
        _NATIVE.append(pointer)

    try:
        reports, _ = _run(leak_native, seconds=15)
    finally:
        for pointer in _NATIVE:
            libc.free(pointer)
        _NATIVE.clear()
    assert reports
    report = reports[0]
    assert report.metric == "rss"
    assert report.origin == "native"
    assert report.note.startswith("Native memory: RSS grew ")
    assert "saw only" in report.note
    assert report.traced_bytes_per_min is not None
    assert report.traced_bytes_per_min < 0.1 * report.rss_bytes_per_min


@pytest.mark.slow  # each runs a real guard for its whole 4.5 s: no signal ends it early
@pytest.mark.parametrize("name", sorted(_CLEAN))
def test_clean_scenario_is_not_suspected(name: str) -> None:
    """Caches that plateau, temporaries, a sawtooth and a one-off step raise no suspicion."""
    reports, guard = _run(_CLEAN[name], seconds=4.5, stop_on_signal=False)
    assert reports == [], str(reports[0])
    detector = guard.component("leaks")
    assert detector is None or isinstance(detector, LeakDetector)


def _paced(per_second: float) -> Callable[[int], None]:
    """``leak_list``'s lists kept at a pace set by the clock, not by the calls: the same
    rate however often a busy machine (or the diagnosis's tracemalloc) lets the loop run."""
    last = time.monotonic()
    owed = 0.0

    def step(i: int) -> None:
        nonlocal last, owed
        now = time.monotonic()
        owed += (now - last) * per_second
        last = now
        for j in range(int(owed)):
            _LIST.append([i, j] * 20)
        owed -= int(owed)

    return step


@pytest.mark.slow  # runs a real guard for its whole 6 s, to see no second signal
def test_signal_is_sent_once_per_episode() -> None:
    """A leak that goes on at a steady rate is signalled once, not every window."""
    # About 36 MB/min. Paced by the calls, a loaded machine slowed the first windows
    # enough that the later rate was rightly a material change.
    reports, _ = _run(_paced(1_600), seconds=6, stop_on_signal=False)
    assert len(reports) == 1


# -- the judgement, on samples the test writes --------------------------------------------

_WINDOW = 10.0


class _Feed:
    """Feeds a detector samples whose heap and RSS figures the test computes."""

    def __init__(self, **options: Any) -> None:
        base = {
            "leak_window": _WINDOW,
            "leak_warmup": 20.0,
            "leak_confirm": 3,
            "leak_min_rate": "1MB",
            "leak_diagnosis_window": 5.0,
            "tracemalloc": "off",
            "relief": False,
            "track_clients": False,
        }
        self.probe = FakeProbe(limit=1000 * MB)
        self.guard = make_guard(self.probe, **{**base, **options})
        detector = self.guard.component("leaks")
        assert isinstance(detector, LeakDetector)
        self.detector = detector
        self.template = self.guard.sample()
        self.t0 = time.monotonic()
        self.t = 0.0
        self.reports: list[LeakReport] = []
        signals.leak_suspected.connect(self._receive, sender=self.guard)

    def _receive(self, sender: Guard, report: LeakReport) -> None:
        self.reports.append(report)

    def run(
        self, seconds: float, heap: Callable[[float], float], rss: Callable[[float], float]
    ) -> None:
        end = self.t + seconds
        while self.t < end:
            value = int(rss(self.t))
            sample = dataclasses.replace(
                self.template,
                monotonic=self.t0 + self.t,
                wall=time.time(),
                heap_blocks=int(heap(self.t)),
                rss=value,
                usage=value,
                usage_fraction=value / (1000 * MB),
            )
            self.guard.history.append(sample)
            self.detector.on_sample(self.guard, sample)
            self.t += 1.0
        self.guard.flush_signals()

    def close(self) -> None:
        signals.leak_suspected.disconnect(self._receive, sender=self.guard)
        self.guard.stop()


@pytest.fixture
def feed() -> Iterator[Callable[..., _Feed]]:
    made: list[_Feed] = []

    def make(**options: Any) -> _Feed:
        made.append(_Feed(**options))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _flat(value: float) -> Callable[[float], float]:
    return lambda t: value


def _linear(base: float, per_minute: float) -> Callable[[float], float]:
    return lambda t: base + per_minute * t / 60.0


def test_linear_heap_growth_reports_rate_duration_and_time_to_limit(feed: Any) -> None:
    """Heap and RSS growing 6 MB/min give a heap report with that rate and the time left."""
    f = feed()
    f.run(120, heap=_linear(100_000, 6 * MB / 80), rss=_linear(200 * MB, 6 * MB))
    assert len(f.reports) == 1
    report = f.reports[0]
    assert report.metric == "heap"
    assert report.rate_mb_per_min == pytest.approx(6, rel=0.05)
    assert report.heap_blocks_per_min == pytest.approx(6 * MB / 80, rel=0.05)
    assert report.duration_seconds >= 3 * _WINDOW
    assert report.time_to_limit_seconds is not None
    expected = (1000 * MB - report.usage_bytes) / (6 * MB) * 60
    assert report.time_to_limit_seconds == pytest.approx(expected, rel=0.05)
    assert f.guard.health()["suspected_leaks"][0]["metric"] == "heap"


def test_without_a_heap_block_count_growth_is_judged_on_rss_and_said_so(
    feed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the interpreter keeps no pymalloc block count, the heap figure decides nothing,
    and an RSS suspicion says the growth may be Python objects, naming why."""
    reason = "sys.getallocatedblocks() reads 0: pymalloc is not in use (PYTHONMALLOC=malloc)"
    monkeypatch.setattr(_interpreter, "HEAP_BLOCKS_UNREAD", reason)
    heap_only = feed()
    heap_only.run(120, heap=_linear(100_000, 6 * MB / 80), rss=_flat(200 * MB))
    assert heap_only.reports == []
    rss = feed()
    rss.run(120, heap=_flat(0), rss=_linear(200 * MB, 4 * MB))
    assert [r.metric for r in rss.reports] == ["rss"]
    assert reason in rss.reports[0].note and "Only RSS grows" not in rss.reports[0].note


_UNREAD_LEAK = """
import json, time
import runtime_guard
from runtime_guard import signals

kept = []
got = []
signals.leak_suspected.connect(lambda sender, report: got.append(report), weak=False)
guard = runtime_guard.install(**json.loads(OPTIONS))
deadline = time.monotonic() + 30
while not got and time.monotonic() < deadline:
    for j in range(10):
        kept.append([len(kept), j] * 20)
    time.sleep(0.005)
guard.flush_signals()
print(json.dumps({"metric": got[0].metric, "note": got[0].note} if got else None))
"""


def test_without_pymalloc_a_python_leak_is_found_on_rss_and_not_called_native() -> None:
    """Under PYTHONMALLOC=malloc a leak of Python lists is suspected on RSS, and the report
    does not call the growth native: it says the small-object heap cannot be read."""
    options = {**_FAST, "memory_limit": "64GB", "tracemalloc": "off"}
    code = _UNREAD_LEAK.replace("OPTIONS", repr(json.dumps(options)))
    environ = {**os.environ, "PYTHONMALLOC": "malloc"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report is not None, done.stderr
    assert report["metric"] == "rss"
    assert "the Python small-object heap cannot be read here" in report["note"], report
    assert "PYTHONMALLOC=malloc" in report["note"]
    assert "growth leaks are judged on RSS alone" in done.stderr


def test_rss_only_growth_is_reported_as_rss(feed: Any) -> None:
    """RSS growth without tracemalloc is reported as RSS, never claimed to be native memory."""
    f = feed()
    f.run(120, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
    assert [r.metric for r in f.reports] == ["rss"]
    assert f.reports[0].origin == "unknown"
    assert "cannot be told from native memory" in f.reports[0].note
    assert "native memory (" not in str(f.reports[0]).splitlines()[0]


@pytest.mark.parametrize(
    ("heap", "rss"),
    [
        # a sawtooth: up 2 MB every 4 s, back to the floor after each collection
        (lambda t: 100_000 + (t % 4) * 5000, lambda t: 200 * MB + (t % 4) * 2 * MB),
        # a one-off step (a lazy import, a pool filling)
        (
            lambda t: 100_000 + (30_000 if t > 50 else 0),
            lambda t: 200 * MB + (8 * MB if t > 50 else 0),
        ),
        # a cache warming to a plateau within two windows after the warm-up
        (lambda t: 100_000 + min(t, 35) * 1000, lambda t: 200 * MB + min(t, 35) * 0.2 * MB),
        # a floor creeping at 40 % of the minimum rate (as the guard's own history does),
        # plus a big step spread over two windows
        (
            lambda t: 100_000 + t * 83 + (100_000 if t > 55 else 0) + (100_000 if t > 62 else 0),
            lambda t: 200 * MB + t * 6667 + (50 * MB if t > 55 else 0) + (50 * MB if t > 62 else 0),
        ),
        # growth below the minimum rate
        (_linear(100_000, 0.5 * MB / 80), _linear(200 * MB, 0.5 * MB)),
    ],
    ids=["sawtooth", "step", "plateau", "creep_and_step", "slow"],
)
def test_no_suspicion_without_sustained_growth(feed: Any, heap: Any, rss: Any) -> None:
    """Sawtooth, steps, plateau and sub-minimum growth never give a suspicion."""
    f = feed()
    f.run(150, heap=heap, rss=rss)
    assert f.reports == []
    assert f.detector.check(f.guard) is None


def test_growth_must_be_seen_in_every_window(feed: Any) -> None:
    """Growth that pauses for one window of the last N is not confirmed (the -R rule)."""
    f = feed()

    def stairs(t: float) -> float:  # grows for two windows, flat for one, and again
        cycle, within = divmod(t, 30.0)
        return 200 * MB + cycle * 20 * MB + min(within, 20.0) * MB

    f.run(150, heap=_flat(100_000), rss=stairs)
    assert f.reports == []


def test_growth_during_warmup_is_ignored(feed: Any) -> None:
    """Start-up growth that ends with the warm-up is not a leak."""
    f = feed(leak_warmup=60.0)
    f.run(150, heap=lambda t: 100_000 + min(t, 55) * 2000, rss=lambda t: 200 * MB + min(t, 55) * MB)
    assert f.reports == []


def test_material_rate_change_is_signalled_again(feed: Any) -> None:
    """A steady leak is signalled once, and again when its rate triples."""
    f = feed()
    f.run(80, heap=_flat(100_000), rss=_linear(200 * MB, 3 * MB))
    assert len(f.reports) == 1
    level = f.reports[0].rss_bytes_per_min
    f.run(40, heap=_flat(100_000), rss=_linear(200 * MB, 3 * MB))
    assert len(f.reports) == 1
    start = 200 * MB + 3 * MB * f.t / 60
    t_start = f.t
    f.run(60, heap=_flat(100_000), rss=lambda t: start + 9 * MB * (t - t_start) / 60)
    assert len(f.reports) >= 2
    assert f.reports[1].rss_bytes_per_min >= 1.5 * level


def test_steady_leak_is_signalled_again_after_the_quiet_period(feed: Any) -> None:
    """A leak that goes on is reported again once ``leak_repeat_after`` has passed."""
    f = feed(leak_repeat_after=100.0)
    f.run(90, heap=_flat(100_000), rss=_linear(200 * MB, 3 * MB))
    assert len(f.reports) == 1
    f.run(60, heap=_flat(100_000), rss=_linear(200 * MB, 3 * MB))
    assert len(f.reports) == 1
    f.run(80, heap=_flat(100_000), rss=_linear(200 * MB, 3 * MB))
    assert len(f.reports) == 2
    assert f.reports[1].duration_seconds > f.reports[0].duration_seconds


def test_suspicion_clears_when_growth_stops(feed: Any) -> None:
    """When the floor stops rising the suspicion leaves health, and a new leak is a new episode."""
    f = feed()
    f.run(90, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
    assert len(f.reports) == 1
    top = 200 * MB + 4 * MB * 1.5
    f.run(60, heap=_flat(100_000), rss=_flat(top))
    assert f.guard.health()["suspected_leaks"] == []
    assert f.detector.check(f.guard) is None
    t_start = f.t
    f.run(70, heap=_flat(100_000), rss=lambda t: top + 4 * MB * (t - t_start) / 60)
    assert len(f.reports) == 2


def test_check_leaks_on_demand_leaves_diagnosis_to_the_sampler(feed: Any) -> None:
    """check_leaks() judges the open window too; the diagnosis waits for the sampler thread."""
    f = feed()
    f.run(56, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
    assert f.guard.health()["suspected_leaks"] == []
    report = f.guard.check_leaks()
    assert isinstance(report, LeakReport)
    assert report.diagnosis == "pending"
    assert report.metric == "rss"
    assert f.detector._diag is None
    assert f.guard.health()["suspected_leaks"][0]["diagnosis"] == "pending"
    f.run(1, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
    assert f.detector._diag is not None


def test_duty_cycle_cap_never_leaves_the_first_report_without_tracemalloc(feed: Any) -> None:
    """The first diagnosis of a leak traces with the cap used up; a repeat waits for budget."""
    f = feed(tracemalloc="on-demand", tracemalloc_duty_cycle=0.01)
    f.detector._traced_seconds = 1e6
    f.run(90, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
    assert len(f.reports) == 1
    assert f.reports[0].diagnosis == "done"
    assert f.reports[0].tracemalloc_seconds > 0
    assert f.reports[0].origin != "unknown"
    # The rate triples: a material change, but no budget: no report without sites.
    f.run(60, heap=_flat(100_000), rss=_linear(200 * MB + 4 * MB * 1.5, 12 * MB))
    assert len(f.reports) == 1
    assert f.detector._diag is None
    assert not tracemalloc.is_tracing()
    # With budget again, the repeat is diagnosed, with tracemalloc.
    f.detector._traced_seconds = 0.0
    f.run(30, heap=_flat(100_000), rss=_linear(200 * MB + 4 * MB * 1.5, 12 * MB))
    assert len(f.reports) == 2
    assert f.reports[1].tracemalloc_seconds > 0
    assert not tracemalloc.is_tracing()


def _churn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every look at the threads see a new set, as in a thread-per-request server."""

    counter = iter(range(1, 1_000_000))
    monkeypatch.setattr(diagnosis, "thread_idents", lambda: frozenset({next(counter)}))


@pytest.fixture
def worker() -> Iterator[threading.Thread]:
    """A live thread besides the main one and the guard's, idle until the test ends."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="request-worker")
    thread.start()
    yield thread
    done.set()
    thread.join()


def test_no_tracemalloc_while_threads_churn_where_stop_may_crash(
    feed: Any, monkeypatch: pytest.MonkeyPatch, worker: threading.Thread
) -> None:
    """Where tracemalloc.stop() can crash (gh-128679), churning threads mean no tracemalloc."""
    monkeypatch.setattr(tracing, "STOP_MAY_CRASH", True)
    _churn(monkeypatch)
    f = feed(tracemalloc="on-demand", tracemalloc_duty_cycle=0.5)
    f.run(100, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
    assert len(f.reports) == 1
    assert "gh-128679" in f.reports[0].diagnosis
    assert "request-worker" in f.reports[0].diagnosis
    assert not tracemalloc.is_tracing()


def test_tracemalloc_used_beside_a_steady_thread_pool(
    feed: Any, monkeypatch: pytest.MonkeyPatch, worker: threading.Thread
) -> None:
    """Threads that neither start nor end (a fixed pool) leave tracemalloc safe to stop."""
    monkeypatch.setattr(tracing, "STOP_MAY_CRASH", True)
    f = feed(tracemalloc="on-demand", tracemalloc_duty_cycle=0.5)
    f.run(100, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
    assert len(f.reports) == 1
    assert f.reports[0].diagnosis == "done"
    assert f.reports[0].tracemalloc_seconds > 0
    assert not tracemalloc.is_tracing()


def test_tracemalloc_stays_on_until_threads_settle(
    feed: Any, monkeypatch: pytest.MonkeyPatch, worker: threading.Thread
) -> None:
    """Threads churning when the window ends keep tracemalloc on until they settle."""
    monkeypatch.setattr(tracing, "STOP_MAY_CRASH", True)
    f = feed(tracemalloc="on-demand", tracemalloc_duty_cycle=0.5)
    f.run(63, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
    assert tracemalloc.is_tracing()  # the diagnosis window is open
    with monkeypatch.context() as churning:
        _churn(churning)
        f.run(10, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
        assert len(f.reports) == 1
        assert tracemalloc.is_tracing()
    f.run(2, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
    assert not tracemalloc.is_tracing()


def test_host_tracemalloc_is_used_and_left_running(feed: Any) -> None:
    """A host that traces already keeps tracing; the diagnosis costs no tracemalloc time."""
    tracemalloc.start(3)
    try:
        f = feed(tracemalloc="on-demand")
        f.run(90, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
        assert len(f.reports) == 1
        assert f.reports[0].tracemalloc_seconds == 0
        assert f.reports[0].diagnosis == "done"
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_reports_are_written_rate_limited(feed: Any, tmp_path: Any) -> None:
    """With report_dir, a leak report is written as JSON, and not again within minutes."""
    f = feed(report_dir=str(tmp_path), leak_repeat_after=30.0)
    f.run(200, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
    assert len(f.reports) >= 2
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["kind"] == "leak"
    assert data["metric"] == "rss"
    assert oct(os.stat(files[0]).st_mode & 0o777) == "0o600"


def test_report_is_json_ready_and_readable() -> None:
    """to_dict() survives JSON; str() gives the figure, rate, sites, types and chain."""
    report = LeakReport(
        metric="heap",
        rate_bytes_per_min=2.5 * MB,
        heap_blocks_per_min=30_000,
        rss_bytes_per_min=2.5 * MB,
        duration_seconds=300,
        time_to_limit_seconds=5400,
        usage_bytes=500 * MB,
        limit_bytes=1000 * MB,
        detected_at=time.time(),
        top_sites=[AllocationSite("app/views.py", 42, "handler", 1_000_000, 900, ["x"])],
        growing_types=[TypeGrowth("app.Session", 10, 910)],
        referrer_chain=["app.views._cache (dict)", "['sessions'] list", "app.Session"],
        chain_type="app.Session",
        diagnosis="done",
        tracemalloc_seconds=20.0,
        heap_walk_seconds=0.25,
        origin="python",
        holder=Holder("app.views._cache", "dict", "list", 502, 48_200_000, 64),
        routes=[RouteGrowth("/reports/{id}", 800, 5600.0, 0.97, "traced")],
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rate_mb_per_min"] == 2.5
    assert data["top_sites"][0]["lineno"] == 42
    assert data["growing_types"][0]["growth"] == 900
    assert data["holder"] == {
        "path": "app.views._cache",
        "type": "dict",
        "item_type": "list",
        "entries": 502,
        "bytes": 48_200_000,
        "sampled": 64,
        "entries_per_min": None,
    }
    assert data["routes"][0]["route"] == "/reports/{id}"
    text = str(report)
    assert text.startswith("leak suspected: Python heap grows 2.50 MB/min for 5.0 min")
    assert "limit reached in ~90.0 min" in text
    assert "app/views.py:42 in handler" in text
    assert "held by: app.views._cache (dict): 46.0 MiB (estimated) in 502 entries" in text
    assert "app.views._cache (dict) -> ['sessions'] list -> app.Session" in text
    assert "/reports/{id}: 5.5 KiB per request over 800 requests (97% of the growth" in text
    assert "tracemalloc on 20.0 s, heap walks 0.25 s" in text


def test_bad_window_count_is_refused() -> None:
    """leak_windows must exceed leak_confirm: the guard refuses to start otherwise."""
    with pytest.raises(ConfigError, match="leak_windows"):
        make_guard(FakeProbe(), leak_windows=3, leak_confirm=3)


def test_detector_can_be_switched_off() -> None:
    """leak_detection=False attaches no detector, and check_leaks() answers None."""
    guard = make_guard(FakeProbe(), leak_detection=False)
    try:
        assert guard.component("leaks") is None
        assert guard.check_leaks() is None
    finally:
        guard.stop()


def test_always_mode_keeps_tracemalloc_on_until_stop() -> None:
    """tracemalloc="always" traces from attach until the guard stops."""
    guard = make_guard(FakeProbe(), tracemalloc="always")
    try:
        assert tracemalloc.is_tracing()
    finally:
        guard.stop()
    assert not tracemalloc.is_tracing()


def test_quiet_samples_never_walk_the_heap(feed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a suspicion the detector only compares numbers: no census, no tracemalloc."""

    calls: list[str] = []

    def census() -> dict[str, int]:
        calls.append("census")
        return {}

    monkeypatch.setattr(diagnosis, "type_census", census)
    f = feed(tracemalloc="on-demand")
    f.run(600, heap=_flat(100_000), rss=_flat(200 * MB))
    assert calls == []
    assert not tracemalloc.is_tracing()


def test_host_tracemalloc_depth_is_kept_and_never_restarted(
    feed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host tracing with its own frame depth (not the guard's) still traces at that depth
    after a diagnosis, with its earlier traces intact: the guard neither stopped nor
    restarted tracemalloc."""
    host_depth = diagnosis.DEFAULT_FRAMES + 5
    tracemalloc.start(host_depth)
    try:
        kept = [bytearray(1000) for _ in range(10)]
        assert tracemalloc.get_object_traceback(kept[0]) is not None
        calls: list[str] = []
        real_start, real_stop = tracemalloc.start, tracemalloc.stop

        def spy_start(*args: Any) -> None:
            calls.append("start")
            real_start(*args)

        def spy_stop() -> None:
            calls.append("stop")
            real_stop()

        monkeypatch.setattr(tracemalloc, "start", spy_start)
        monkeypatch.setattr(tracemalloc, "stop", spy_stop)
        f = feed(tracemalloc="on-demand")
        f.run(90, heap=_flat(100_000), rss=_linear(200 * MB, 4 * MB))
        assert len(f.reports) == 1 and f.reports[0].diagnosis == "done"
        assert calls == []
        assert tracemalloc.is_tracing()
        assert tracemalloc.get_traceback_limit() == host_depth
        assert tracemalloc.get_object_traceback(kept[0]) is not None
    finally:
        tracemalloc.stop()


def test_leak_floors_are_capped_at_leak_windows(feed: Any) -> None:
    """However long the guard watches, the detector keeps leak_windows floors, no more."""
    f = feed(leak_windows=6)
    f.run(_WINDOW * 40, heap=_flat(100_000), rss=_flat(200 * MB))
    assert len(f.detector._floors) == 6


def test_an_early_diagnosis_is_kept_within_the_time_it_is_given() -> None:
    """diagnose_early(most_seconds=2) traces about 2 s, not leak_diagnosis_window's 20."""
    guard = make_guard(FakeProbe(), relief=False)
    detector = guard.component("leaks")
    assert isinstance(detector, LeakDetector)
    base = time.monotonic() + 100.0  # a hundred seconds up: the duty cycle allows 5 s
    sample = dataclasses.replace(guard.sample(), monotonic=base)
    points = [(base - 10 + i, 50e6 + i * 1e6, 100_000.0 + i * 100) for i in range(10)]
    keep = []
    try:
        assert detector.diagnose_early(sample, points, least_trace=1.0, most_seconds=2.0)
        for i in range(1, 30):
            keep.append(bytearray(64 * 1024))
            detector.on_sample(guard, dataclasses.replace(sample, monotonic=base + i))
            report = detector.current_report()
            if report is not None and report.diagnosis != "pending":
                break
        assert report is not None and report.diagnosis.startswith("done")
        assert report.diagnosis_window_seconds <= 3.0
        assert "Diagnosed at once" in report.note
    finally:
        guard.stop()


@pytest.mark.parametrize(
    ("traced_mb", "young", "windows"),
    [(2.6, 0.05, 0.5), (16.0, 0.05, 3.0), (2.6, 0.9, 3.0)],
    ids=["leak", "kept_far_faster_than_the_floors_rose", "young_entries"],
)
def test_a_holder_is_watched_long_enough_to_see_a_flush_when_what_was_kept_is_transient(
    traced_mb: float, young: float, windows: float
) -> None:
    """A holder is watched half a window before its report when the window's traced rate
    matches the floors' (a leak: measured 1.2-1.8x on 30 servers); three windows, enough to
    see a batch flushed, when its entries are young or tracemalloc saw Python keep many
    times what the floors rose by (a batch filling while RSS crept: measured 7.7x)."""
    from runtime_guard.diagnosis.holders import Found
    from runtime_guard.leaks.window import Conclusion, Window

    config = Config.from_options({"leak_window": 10.0}, environ={})
    detector = LeakDetector(config, clock=lambda: 0.0)
    batch = [{"id": n} for n in range(90)]
    found = Found(root="app", path=[{"batch": batch}, batch], holder=1, visited=2, seconds=0.0)
    site = AllocationSite("app.py", 16, "track", size_diff=180_000, count_diff=64)
    report = LeakReport(
        metric="rss",
        rate_bytes_per_min=2.0 * MB,
        heap_blocks_per_min=0.0,
        rss_bytes_per_min=2.0 * MB,
        duration_seconds=31.0,
        time_to_limit_seconds=None,
        usage_bytes=0,
        limit_bytes=0,
        detected_at=0.0,
        top_sites=[site],
        holder=Holder("app.batch", "list", "dict", entries=90, retained_bytes=540_000),
        traced_bytes_per_min=traced_mb * MB,
        origin="python",
    )
    window = Window(started=100.0, min_end=102.0, max_end=120.0, reason="growth")
    conclusion = Conclusion(sites=[site], found=found, young=young)
    guard = make_guard(FakeProbe())
    try:
        sample = dataclasses.replace(guard.sample(), monotonic=105.0)
    finally:
        guard.stop()
    watch = detector._watch(conclusion, report, window, sample)
    assert watch is not None
    assert watch.decide_at == pytest.approx(windows * config.leak_window)
