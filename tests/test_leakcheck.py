"""Leak-check options, fuzzed: marker arguments and --leak-check* values, parsed in-process."""

from __future__ import annotations

import json
import os
import tracemalloc
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
env_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
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


def test_a_body_that_keeps_nothing_is_clean_even_at_zero_tolerance() -> None:
    """The check's own readings between rounds never count as growth of the body's heap."""
    result = _checked(lambda: None, tolerance=0, rounds=5, check=("heap",))
    assert not result.leaked, result.message(verbose=True)


def test_a_heap_leak_is_judged_and_diagnosed_in_process() -> None:
    """A body keeping 64 KiB per run fails on the heap and names its line and type."""
    kept: list[bytearray] = []
    result = _checked(lambda: kept.append(bytearray(65_536)), rounds=3, check=("heap",))
    assert result.leaked
    assert result.figures["heap"].grew_every_round
    assert any(site.filename == __file__ for site in result.sites), result.message(True)
    assert any(growth.type_name == "bytearray" for growth in result.types), result.message(True)


def test_a_clean_body_never_runs_under_tracemalloc() -> None:
    """Untraced rounds settle a clean body's verdict; tracemalloc is never started for it."""
    tracing: list[bool] = []
    result = _checked(lambda: tracing.append(tracemalloc.is_tracing()), rounds=5)
    assert not result.leaked, result.message(verbose=True)
    assert result.rounds_run == 1 and result.traced_rounds == 0
    assert not any(tracing)


def test_a_leaky_body_is_traced_in_its_last_round_only() -> None:
    """Every round but the last runs untraced; the last one names the growth."""
    kept: list[object] = []
    tracing: list[bool] = []

    def body() -> None:
        tracing.append(tracemalloc.is_tracing())
        kept.extend({"n": str(n)} for n in range(200))

    result = _checked(body, rounds=4)
    assert result.leaked and result.traced_rounds == 1
    assert tracing == [False] * 5 + [True]  # 2 warm-up runs, 3 untraced rounds, 1 traced
    assert not tracemalloc.is_tracing()
    assert "the last one traced" in result.message()
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


def test_replacing_a_buffer_each_run_is_not_growth_even_when_traced_alone() -> None:
    """A traced round that frees an untraced buffer and makes a new one has not grown."""
    holder: dict[str, bytearray] = {}
    result = _checked(lambda: holder.__setitem__("buffer", bytearray(100_000)), rounds=1)
    assert result.traced_rounds == 1
    assert not result.leaked, result.message(verbose=True)


def test_zero_tolerance_catches_one_small_object_per_round() -> None:
    """At tolerance 0 a single 16-byte object kept per run is a leak, and its line is named:
    finer than the untraced bound can tell, every round is traced."""
    kept: list[object] = []
    result = _checked(lambda: kept.append(object()), tolerance=0, rounds=5)
    assert result.leaked, result.message(verbose=True)
    assert result.traced_rounds == result.rounds_run == 5
    assert any(
        site.filename == __file__ and site.function.endswith("<lambda>") for site in result.sites
    ), result.message(verbose=True)


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
    assert any(site.filename == __file__ for site in leaky.sites), leaky.message(True)
    assert not clean.leaked, clean.message(True)


def test_a_leak_made_inside_a_stdlib_helper_names_the_line_that_called_it() -> None:
    """Records json.loads builds and the body keeps are reported at the body's line."""
    kept: list[object] = []
    payload = json.dumps([{"id": n, "name": f"item-{n}"} for n in range(100)])
    result = _checked(lambda: kept.append(json.loads(payload)), rounds=3)
    assert result.leaked
    top = result.sites[0]
    assert top.filename == __file__ and top.function.endswith("<lambda>"), result.message(True)


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
    assert leaky.leaked and any(site.filename == __file__ for site in leaky.sites)
    assert not clean.leaked, clean.message(True)


def test_a_buffer_grown_in_place_is_a_leak_though_no_object_is_made() -> None:
    """Growth with no new object or block (a bytearray extended in place) is seen untraced."""
    buffer = bytearray()
    items: list[None] = []

    def body() -> None:
        buffer.extend(b"x" * 40_000)
        items.extend([None] * 5_000)

    result = _checked(body, rounds=4, check=("heap",))
    assert result.leaked, result.message(verbose=True)
    assert result.figures["heap"].grew_every_round
    assert any(site.filename == __file__ for site in result.sites), result.message(True)
