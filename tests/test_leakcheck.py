"""Leak-check options, fuzzed: marker arguments and --leak-check* values, parsed in-process."""

from __future__ import annotations

import os
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
