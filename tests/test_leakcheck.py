# mypy: disallow-untyped-calls=False, disallow-untyped-decorators=False
# (these tests drive third-party code that ships without types: Celery, redis-py, hypothesis)
"""The leak check in-process: its options fuzzed, its verdicts and its diagnosis."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import queue
import re
import socket
import socketserver
import sys
import threading
import time
import tracemalloc
import types
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime_guard import pytest_plugin
from runtime_guard._leakcheck import CHECKS, LeakCheckOptions

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ARGUMENTS = ("rounds", "warmup", "tolerance", "check", "track", "unreleased")

# Values a marker argument may be given by mistake: every JSON-ish type, containers of
# them, types and plain objects, plus near misses of the accepted forms.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=6)
    | st.sampled_from(
        ["5", " 3 ", "²", "١٢", "1_0", "9" * 5000, "16KB", "-1KB", "nan", "1e999", *CHECKS]
    )
    | st.sampled_from([int, str, object, dict, object(), Ellipsis])
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.frozensets(st.sampled_from([*CHECKS, "rss", 1]), max_size=3)
        | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
names = st.sampled_from(ARGUMENTS) | st.text(min_size=1, max_size=10).filter(str.isidentifier)


@dataclass
class FakeItem:
    """The two things :func:`pytest_plugin._marker_options` reads from a test item."""

    marks: dict[str, pytest.Mark] = field(default_factory=dict)
    nodeid: str = "test_x.py::test_fuzzed"

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return self.marks.get(name)


def _check_valid(options: LeakCheckOptions) -> None:
    assert isinstance(options.rounds, int) and options.rounds >= 1
    assert isinstance(options.warmup, int) and options.warmup >= 0
    assert isinstance(options.tolerance, int) and options.tolerance >= 0
    assert set(options.check) <= set(CHECKS)
    assert all(isinstance(item, (str, type)) for item in options.track)


@FUZZ
@given(
    st.lists(values, max_size=2),
    st.dictionaries(names, values, max_size=4),
    st.lists(values, max_size=3),
    st.dictionaries(names, values, max_size=1),
)
def test_marker_arguments_are_accepted_or_refused_naming_the_argument(
    leak_args: list[Any],
    leak_kwargs: dict[str, Any],
    unreleased_args: list[Any],
    unreleased_kwargs: dict[str, Any],
) -> None:
    """Any no_leaks/no_unreleased arguments give valid options or a failure naming the argument."""
    item = FakeItem()
    item.marks["no_leaks"] = pytest.mark.no_leaks.with_args(*leak_args, **leak_kwargs).mark
    item.marks["no_unreleased"] = pytest.mark.no_unreleased.with_args(
        *unreleased_args, **unreleased_kwargs
    ).mark
    plain = pytest_plugin._Settings(False, None, None, False)
    try:
        options = pytest_plugin._marker_options(item, plain)  # type: ignore[arg-type]
    except pytest.fail.Exception as exc:
        message = str(exc)
        assert message.startswith(item.nodeid + ": "), message
        assert "\n" not in message and len(message) < 400, message
        assert (
            "is not accepted: expected" in message
            or "unknown leak-check argument" in message
            or "keyword arguments only" in message
            or "classes or dotted names only" in message
        ), message
        return
    assert options is not None
    _check_valid(options)


@FUZZ
@given(st.sampled_from(ARGUMENTS), values)
def test_each_argument_alone_is_accepted_or_refused_by_name(name: str, value: Any) -> None:
    """One argument with any value gives valid options or one short ValueError naming it."""
    try:
        options = LeakCheckOptions().replace(**{name: value})
    except ValueError as exc:
        message = str(exc)
        assert message.startswith(f"{name}="), message
        assert "is not accepted: expected" in message and len(message) < 400, message
        return
    _check_valid(options)


OPTION_NAMES = ("leak_check", "leak_check_rounds", "leak_check_tolerance")
env_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
option_texts = env_text | st.sampled_from(["1", "0", "yes", "²", "9" * 5000, "16KB", " 2 "])


@dataclass
class FakeConfig:
    """What :func:`pytest_plugin._resolve` reads from pytest's config."""

    cli: dict[str, Any]
    ini: dict[str, Any]

    def getoption(self, name: str) -> Any:
        return self.cli.get(name)

    def getini(self, name: str) -> Any:
        return self.ini.get(name, False if name == "leak_check" else "")

    def get_verbosity(self) -> int:
        return 0


@FUZZ
@given(
    st.dictionaries(st.sampled_from(OPTION_NAMES), option_texts | st.booleans(), max_size=3),
    st.dictionaries(st.sampled_from(OPTION_NAMES), option_texts, max_size=3),
    st.dictionaries(st.sampled_from(OPTION_NAMES), option_texts | st.booleans(), max_size=3),
)
def test_leak_check_options_are_accepted_or_usage_errors_naming_the_source(
    cli: dict[str, Any], env: dict[str, str], ini: dict[str, Any]
) -> None:
    """Any --leak-check* / RUNTIME_GUARD_LEAK_CHECK* / ini value is used or refused by name."""
    variables = {f"RUNTIME_GUARD_{name.upper()}": value for name, value in env.items()}
    cleared = {f"RUNTIME_GUARD_{name.upper()}": "" for name in OPTION_NAMES}
    with mock.patch.dict(os.environ, {**cleared, **variables}):
        try:
            resolved = pytest_plugin._resolve(FakeConfig(cli, ini))  # type: ignore[arg-type]
        except pytest.UsageError as exc:
            message = str(exc)
            assert "is not accepted: expected" in message and len(message) < 400
            assert message.startswith(
                ("--leak-check", "RUNTIME_GUARD_LEAK_CHECK", "ini leak_check")
            )
            return
    _check_valid(pytest_plugin._defaults(resolved))
    assert isinstance(resolved.enabled, bool)


def _checked(body: Any, **options: Any) -> Any:
    from runtime_guard._leakcheck import LeakCheck

    check = LeakCheck(LeakCheckOptions().replace(**options), label="body")
    for _ in check.runs():
        body()
    return check.result


def test_a_body_that_keeps_nothing_is_clean_at_the_defaults() -> None:
    """The check's own readings between rounds never count as growth: zero, every round."""
    for body in (lambda: None, lambda: {"id": 1, "tags": [1, 2, 3]}):
        result = _checked(body, rounds=5)
        assert not result.leaked, result.message(verbose=True)
        assert result.rounds_run == 1
        assert all(
            figure.deltas == [0] for name, figure in result.figures.items() if name != "heap"
        )


def test_one_small_object_kept_per_call_is_a_leak_at_the_defaults() -> None:
    """A 16-byte object kept per call (one block) fails, and its line is the one named."""
    kept: list[object] = []
    result = _checked(lambda: kept.append(object()), rounds=5)
    assert result.leaked, result.message(verbose=True)
    assert [figure.name for figure in result.grown] == ["objects"]
    assert result.traced_rounds == 1 and result.rounds_run == 5
    assert result.line is not None and result.line.filename == __file__, result.message(True)
    assert result.line.function.endswith("<lambda>") and result.line.type_name == "object"


def test_the_diagnosis_runs_without_automatic_collections_and_leaves_them_as_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a failing check surveys what the calls kept, no automatic collection runs (a
    collection of the whole heap per allocation was a third of its time); afterwards the
    collector is on again, or still off where the host had switched it off."""
    from runtime_guard._leakcheck import scan

    seen: list[bool] = []
    survey = scan.survey

    def watched(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return survey(*args, **kwargs)

    monkeypatch.setattr(scan, "survey", watched)
    kept: list[object] = []
    for host_enabled in (True, False):
        if not host_enabled:
            gc.disable()
        try:
            result = _checked(lambda: kept.append(object()), rounds=3)
            assert result.leaked and seen[-1] is False
            assert gc.isenabled() is host_enabled
        finally:
            gc.enable()
    assert len(seen) == 2


def test_a_heap_leak_is_judged_and_diagnosed_in_process() -> None:
    """A body keeping 64 KiB per call fails on the heap and names its line and type."""
    kept: list[bytearray] = []
    result = _checked(lambda: kept.append(bytearray(65_536)), rounds=3, check=("heap",))
    assert result.leaked
    assert result.figures["heap"].grew_every_round
    assert result.line is not None and result.line.filename == __file__, result.message(True)
    assert result.line.type_name == "bytearray" and result.line.size >= 65_536
    assert any(growth.type_name == "bytearray" for growth in result.types), result.message(True)


def test_a_clean_body_never_runs_under_tracemalloc() -> None:
    """Untraced rounds settle a clean body's verdict; tracemalloc is never started for it."""
    tracing: list[bool] = []
    result = _checked(lambda: tracing.append(tracemalloc.is_tracing()), rounds=5)
    assert not result.leaked, result.message(verbose=True)
    assert result.rounds_run == 1 and result.traced_rounds == 0
    assert not any(tracing)


def test_a_leaky_body_is_traced_in_its_last_round_only() -> None:
    """Every round but the last runs untraced, several calls each; the last, of a few
    calls, is traced and names the growth."""
    kept: list[object] = []
    tracing: list[bool] = []

    def body() -> None:
        tracing.append(tracemalloc.is_tracing())
        kept.extend({"n": str(n)} for n in range(20))

    result = _checked(body, rounds=4)
    calls = result.figures["objects"].calls
    assert result.leaked and result.traced_rounds == 1 and calls[-1] == result.traced_calls
    assert 1 <= result.traced_calls <= 4
    # 2 warm-up calls, 3 untraced rounds, then the traced one.
    assert tracing == [False] * (2 + sum(calls[:-1])) + [True] * calls[-1]
    assert not tracemalloc.is_tracing()
    assert re.search(r"the last one (a single traced call|traced \(\d calls\))", result.message())
    assert result.chain is not None and "kept (list)" in result.chain[0], result.message(True)


def test_without_an_allocator_reading_every_round_is_traced() -> None:
    """Where malloc cannot be read the heap is judged from traces in every round instead."""
    from runtime_guard._leakcheck import LeakCheck

    kept: list[bytearray] = []
    for body, leaks in ((lambda: kept.append(bytearray(65_536)), True), (lambda: None, False)):
        check = LeakCheck(LeakCheckOptions().replace(rounds=3), label="body", malloc=None)
        for _ in check.runs():
            body()
        assert check.result.leaked is leaks, check.result.message(verbose=True)
        assert check.result.traced_rounds == check.result.rounds_run


def test_without_a_block_count_small_objects_are_counted_from_traces() -> None:
    """Where the interpreter counts no pymalloc blocks (PYTHONMALLOC=malloc, free-threaded
    builds), one small object kept per call still fails, named at its line and per call, the
    failure saying how it was counted; a clean body passes."""
    from runtime_guard._leakcheck import LeakCheck

    kept: list[object] = []
    for body, leaks in ((lambda: kept.append(object()), True), (lambda: None, False)):
        check = LeakCheck(LeakCheckOptions().replace(rounds=3), label="body", blocks=None)
        for _ in check.runs():
            body()
        result = check.result
        assert result.leaked is leaks, result.message(verbose=True)
        assert result.traced_blocks and result.traced_rounds == result.rounds_run
        assert not tracemalloc.is_tracing()
        if not leaks:
            continue
        assert [figure.name for figure in result.grown] == ["objects"]
        assert result.line is not None and result.line.filename == __file__
        assert result.line.type_name == "object" and result.line.count == 1, result.message(True)
        assert result.traced_calls == sum(result.figures["objects"].calls)
        message = result.message()
        assert "Python allocations (tracemalloc traces) +1/call" in message, message
        assert "note: small objects counted from tracemalloc's traces" in message, message


def test_a_string_interned_per_call_is_a_leak_only_where_interned_strings_are_immortal() -> None:
    """On 3.12, which never frees an interned string, interning a new one per call fails and
    says why; where the last reference frees it (3.11, 3.13) it passes."""
    ids = iter(range(10**6))
    result = _checked(lambda: sys.intern(f"order-key-{next(ids)}"), rounds=4)
    if sys.version_info[:2] != (3, 12):
        assert not result.leaked, result.message(verbose=True)
        return
    assert result.leaked
    assert result.line is not None and result.line.filename == __file__, result.message(True)
    assert result.line.what == "a string interned per call and never freed"
    message = result.message()
    assert "note: strings interned for good +1/call: Python 3.12 never frees" in message, message


def test_replacing_a_buffer_each_run_is_not_growth_even_when_traced_alone() -> None:
    """A traced round that frees an untraced buffer and makes a new one has not grown."""
    holder: dict[str, bytearray] = {}
    result = _checked(lambda: holder.__setitem__("buffer", bytearray(100_000)), rounds=1)
    assert result.traced_rounds == 1
    assert not result.leaked, result.message(verbose=True)


def test_a_host_tracing_already_keeps_its_tracing_and_gets_verdicts() -> None:
    """With tracemalloc started by the host, every round is traced and it is never stopped."""
    kept: list[bytearray] = []
    tracemalloc.start(5)
    try:
        leaky = _checked(lambda: kept.append(bytearray(65_536)), rounds=3)
        clean = _checked(lambda: None, rounds=3)
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()
    assert leaky.leaked and leaky.traced_rounds == leaky.rounds_run == 3
    assert leaky.line is not None and leaky.line.filename == __file__, leaky.message(True)
    assert not clean.leaked, clean.message(True)


def test_a_leak_made_inside_a_stdlib_helper_names_the_line_that_called_it() -> None:
    """Records json.loads builds and the body keeps are reported at the body's line."""
    kept: list[object] = []
    payload = json.dumps([{"id": n, "name": f"item-{n}"} for n in range(100)])
    result = _checked(lambda: kept.append(json.loads(payload)), rounds=3)
    assert result.leaked
    line = result.line
    assert line is not None and line.filename == __file__, result.message(True)
    assert line.function.endswith("<lambda>") and line.type_name == "list"


def test_an_object_a_library_builds_deep_inside_is_named_at_the_user_line() -> None:
    """A message the email parser builds eight frames below the caller, kept per call, is
    reported at the caller's line: one more call is traced with frames enough to reach it."""
    import email

    kept: list[object] = []
    text = "From: a@example.com\nSubject: order 42\n\nthanks\n"
    result = _checked(lambda: kept.append(email.message_from_string(text)), rounds=3)
    assert result.leaked
    line = result.line
    assert line is not None and line.filename == __file__, result.message(True)
    assert line.type_name == "email.message.Message", result.message(True)


# A registry in this module, which has more names than a registry has entries.
_ORDERS: list[dict[str, int]] = []


def test_a_module_of_many_names_is_searched_for_the_holder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A module-level list of a module with over a hundred names is found going forwards
    as what holds the leak, with no backward scan of the heap."""
    from runtime_guard._leakcheck import scan

    assert len(globals()) > 64
    monkeypatch.setattr(scan, "backward_chain", lambda candidates: None)
    result = _checked(lambda: _ORDERS.append({"id": len(_ORDERS)}), rounds=3)
    assert result.leaked
    assert result.chain is not None and result.chain[0].endswith("._ORDERS (list)"), result.message(
        True
    )


def test_a_library_registry_holding_the_leak_is_named_going_forwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A logger made per call is held by logging's own registry, and the chain to it is
    found from the logging module, with no backward scan of the heap."""
    import itertools
    import logging

    from runtime_guard._leakcheck import scan

    monkeypatch.setattr(scan, "backward_chain", lambda candidates: None)
    ids = itertools.count()
    result = _checked(lambda: logging.getLogger(f"rg-test.request.{next(ids)}"), rounds=3)
    assert result.leaked
    assert result.line is not None and result.line.filename == __file__, result.message(True)
    assert result.chain is not None, result.message(True)
    assert result.chain[0].startswith("logging.") and ".loggerDict dict" in result.chain


_HELD_TOO: list[object] = []


def test_the_backward_chain_never_starts_in_the_checks_own_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An object a module of this package also holds is reported held by the user's
    module-level name, not by the package's."""
    import runtime_guard
    from runtime_guard._leakcheck import scan

    own = types.ModuleType("runtime_guard._probe_holder")
    own.__file__ = os.path.join(os.path.dirname(runtime_guard.__file__), "_probe_holder.py")
    record = {"order": 42}
    own.kept = [record]  # type: ignore[attr-defined]
    _HELD_TOO.append(record)
    monkeypatch.setitem(sys.modules, own.__name__, own)
    # Where the chain starts is checked, not how fast it is found: a worker's heap late in a
    # whole run took longer than the check's own budget of 40 ms to scan.
    monkeypatch.setattr(scan, "_BACKWARD_SECONDS", 5.0)
    try:
        chain = scan.backward_chain([record])
    finally:
        _HELD_TOO.clear()
    assert chain is not None and chain[0].endswith("._HELD_TOO (list)"), chain


def test_unreleased_clients_made_inside_a_library_are_shown_at_its_short_path() -> None:
    """Sockets a pool's worker made and the body kept are listed at the library's path as
    installed (``socket.py:N``), as allocation sites are, not at the interpreter's path."""
    kept: list[tuple[socket.socket, socket.socket]] = []
    with ThreadPoolExecutor(1) as pool:
        try:
            result = _checked(lambda: kept.append(pool.submit(socket.socketpair).result()))
        finally:
            for pair in kept:
                for end in pair:
                    end.close()
    assert result.leaked and result.unreleased, result.message(True)
    sites = [item.site for item in result.unreleased]
    assert all(site.startswith("socket.py:") for site in sites), sites


def test_a_host_that_froze_objects_keeps_its_freeze_and_gets_verdicts() -> None:
    """A heap the host froze itself is left frozen as it was, and verdicts still hold."""
    import gc

    kept: list[bytearray] = []
    gc.freeze()
    frozen = gc.get_freeze_count()
    try:
        leaky = _checked(lambda: kept.append(bytearray(65_536)), rounds=3)
        clean = _checked(lambda: None, rounds=3)
        # Frozen objects may still die; unfrozen, none would be left.
        assert gc.get_freeze_count() > frozen // 2
    finally:
        gc.unfreeze()
    assert leaky.leaked and leaky.line is not None and leaky.line.filename == __file__
    assert not clean.leaked, clean.message(True)


def test_a_buffer_grown_in_place_is_a_leak_though_no_object_is_made() -> None:
    """Growth with no new object or block (a bytearray extended in place) is seen untraced,
    though a single call may grow into room the buffer reserved before."""
    buffer = bytearray()
    items: list[None] = []

    def body() -> None:
        buffer.extend(b"x" * 40_000)
        items.extend([None] * 5_000)

    result = _checked(body, rounds=4, check=("heap",))
    assert result.leaked, result.message(verbose=True)
    assert result.figures["heap"].grew_every_round


class _SetUpOnFirstUse:
    """Sets itself up on the first attribute read, as Django's settings do; unset, it raises."""

    def __getattribute__(self, name: str) -> Any:
        raise RuntimeError(f"read {name!r} before settings were configured")


_LAZY_SETTINGS = _SetUpOnFirstUse()


def test_a_lazy_object_among_the_user_globals_is_passed_by_unread() -> None:
    """The search for what holds a leak goes past a module-level lazy object without
    reading any attribute of it (its class included)."""
    kept: list[bytes] = []
    result = _checked(lambda: kept.append(bytes(4_000)), rounds=4)
    assert result.leaked, result.message(verbose=True)
    assert _LAZY_SETTINGS is not None


def test_calls_per_round_fill_two_milliseconds() -> None:
    """A round runs as many calls as fit in 2 ms, a power of two from 1 to 16."""
    from runtime_guard._leakcheck.check import _call_cost, calls_per_round

    assert calls_per_round(None) == 1
    assert [calls_per_round(s) for s in (1e-6, 1e-4, 2e-4, 1e-3, 5e-3)] == [16, 16, 8, 2, 1]
    # A call that mostly waits counts a quarter of its wall time; CPU time in full.
    assert _call_cost(wall=4e-3, cpu=1e-4) == 1e-3
    assert _call_cost(wall=2e-4, cpu=1e-4) == 1e-4


def test_a_figure_grows_only_if_it_grew_in_every_round_and_the_heap_steadily() -> None:
    """CPython's rule for counts; for bytes also about as much per call in every round, so
    malloc's caching, which moves by different amounts each round, is not a leak."""
    from runtime_guard._leakcheck.check import grew

    assert grew("objects", [1, 1, 1, 1, 1], [0] * 5, [1] * 5)
    assert not grew("objects", [9, 9, 0, 9, 9], [0] * 5, [1] * 5)
    assert grew("heap", [30_000, 31_000, 29_500, 30_200], [4096] * 4, [1] * 4)
    # Measured on an HTTPS client made and closed per call.
    assert not grew("heap", [32_832, 6_496, 5_264, 60_832], [4096] * 4, [1] * 4)
    # The one-call traced round is left out of the heap's judgement.
    assert grew("heap", [160_000, 150_000, 170_000, 0], [4096] * 4, [16, 16, 16, 1])


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


def test_a_server_thread_and_a_thread_pool_do_not_decide_the_verdict() -> None:
    """Work the body hands to a server thread (which closes its end of each connection
    after the body returned) and to a thread pool is waited for before each reading:
    clean bodies stay clean and leaky ones fail, run after run, including a leak made on
    the pool's own thread."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pool = ThreadPoolExecutor(max_workers=2)
    kept: list[object] = []

    def request(keep: bool) -> None:
        host, port = server.server_address[:2]
        connection = socket.create_connection((str(host), port))
        connection.sendall(b"ping")
        connection.recv(16)
        if keep:
            kept.append(connection)
        else:
            connection.close()

    try:
        for _ in range(3):
            clean = _checked(lambda: request(keep=False))
            assert not clean.leaked, clean.message(verbose=True)
            assert not _checked(lambda: pool.submit(sum, [1, 2]).result()).leaked
            leaky = _checked(lambda: request(keep=True))
            assert leaky.leaked and "fds" in [figure.name for figure in leaky.grown]
            on_pool = _checked(lambda: pool.submit(kept.append, {"n": 1}).result())
            assert on_pool.leaked, on_pool.message(verbose=True)
    finally:
        pool.shutdown()
        server.shutdown()
        server.server_close()
        for connection in kept:
            if isinstance(connection, socket.socket):
                connection.close()


def _watch(updates: queue.Queue[str], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            updates.get(timeout=0.001)
        except queue.Empty:
            continue


def test_threads_waiting_in_a_loop_leave_verdicts_and_the_named_line_to_the_body() -> None:
    """Threads started before the check that wait in ``queue.get(timeout=...)`` loops (a
    leaked watcher per earlier request) make and free a waiter and a deadline each wait:
    a clean body stays clean, a leaky one fails at its own line, the first site listed."""
    stop = threading.Event()
    watchers = [
        threading.Thread(target=_watch, args=(queue.Queue(), stop), daemon=True) for _ in range(30)
    ]
    for watcher in watchers:
        watcher.start()
    kept: list[object] = []
    try:
        for _ in range(3):
            clean = _checked(lambda: sum(range(1_000)))
            assert not clean.leaked, clean.message(verbose=True)
            leaky = _checked(lambda: kept.append({"n": len(kept)}))
            assert leaky.leaked, leaky.message(verbose=True)
            assert leaky.line is not None and leaky.line.filename == __file__
            assert leaky.sites and leaky.sites[0].function != "_watch"
    finally:
        stop.set()
        for watcher in watchers:
            watcher.join()


def test_an_installed_guard_sampling_fast_does_not_count_and_samples_after() -> None:
    """A guard sampling every 2 ms records nothing while a check runs, so a clean body
    passes; its sampler goes on sampling once the check is over."""
    import runtime_guard

    guard = runtime_guard.install(interval=0.002)
    try:
        for _ in range(3):
            assert not _checked(lambda: None).leaked
        before = len(guard.history)
        deadline = time.monotonic() + 5
        while len(guard.history) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(guard.history) > before
    finally:
        runtime_guard.uninstall()


class PaymentError(Exception):
    pass


def test_kept_exceptions_are_named_with_the_frames_their_tracebacks_keep() -> None:
    """An exception kept per call names its type, where it was raised and the frame whose
    locals its traceback keeps alive."""
    failures: list[Exception] = []

    def charge(order_id: int) -> None:
        payload = b"x" * 4_000
        raise PaymentError(f"refused {order_id} ({len(payload)} bytes)")

    def body() -> None:
        try:
            charge(1)
        except PaymentError as exc:
            failures.append(exc)

    result = _checked(body, rounds=3)
    assert result.leaked
    assert result.line is not None and result.line.type_name.endswith("PaymentError")
    text = result.exceptions[0]
    assert "PaymentError" in text and "charge()" in text and "payload: bytes" in text, text


def test_a_thread_started_per_call_is_named_by_the_line_that_started_it() -> None:
    """Live threads are a figure: one left running per call fails, named by its start."""
    stop = threading.Event()
    try:
        result = _checked(lambda: threading.Thread(target=stop.wait, daemon=True).start())
    finally:
        stop.set()
    assert "threads" in [figure.name for figure in result.grown]
    assert result.line is not None and result.line.filename == __file__, result.message(True)
    assert "a thread started per call" in result.message()
    assert re.search(r"\d+ x running .*started at .*test_leakcheck.py:\d+", result.threads[0])


def test_an_asyncio_task_left_pending_per_call_is_named_by_its_creation() -> None:
    """Pending asyncio tasks are a figure: one left per call fails, named by the line that
    created it and where it waits."""

    async def poll() -> None:
        await asyncio.sleep(3600)

    async def subscribe() -> None:
        asyncio.get_running_loop().create_task(poll())
        await asyncio.sleep(0)

    with asyncio.Runner() as runner:
        result = _checked(lambda: runner.run(subscribe()))
    assert "tasks" in [figure.name for figure in result.grown]
    assert result.line is not None and result.line.filename == __file__, result.message(True)
    assert "waiting" in result.tasks[0] and "in " in result.tasks[0], result.tasks


def test_repeated_warnings_recorded_by_pytest_are_kept_once() -> None:
    """pytest's record of warnings keeps the first of each repeated warning raised while a
    check runs, as one run of the test would have recorded it."""
    from runtime_guard._leakcheck.settle import RecordedWarnings

    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        warnings.warn("before the check", UserWarning, stacklevel=1)
        recorded = RecordedWarnings()
        for _ in range(5):
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
            warnings.warn("other", UserWarning, stacklevel=1)
        recorded.drop_repeats()
    assert [str(w.message) for w in log] == ["before the check", "old API", "other"]


def test_a_round_in_which_something_else_freed_is_run_again() -> None:
    """A round in which the count of a leaking body fell (another test's garbage, a cache
    emptied elsewhere) tells nothing of the body: it runs again, and the leak is found."""
    kept: list[object] = []
    elsewhere = [object() for _ in range(5_000)]  # made before the check

    def body() -> None:
        kept.append(object())
        if len(kept) == 12:
            elsewhere.clear()

    result = _checked(body)
    assert not elsewhere
    assert result.leaked, result.message(verbose=True)
