"""Options from keywords and RUNTIME_GUARD_* variables, and the errors for bad ones."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import runtime_guard
from runtime_guard.config import Config, ConfigError, env_name


def test_defaults_follow_the_design() -> None:
    """With nothing given, the documented defaults apply."""
    config = Config.from_options({}, environ={})
    assert (config.elevated, config.high, config.critical) == (0.70, 0.85, 0.95)
    assert config.interval == 1.0
    assert config.memory_limit is None
    assert config.tracemalloc == "on-demand"
    assert config.track_clients is True
    assert config.history_size * config.interval >= 3600


def test_environment_is_read_and_keywords_win() -> None:
    """RUNTIME_GUARD_<NAME> sets an option; a keyword for the same option wins."""
    env = {"RUNTIME_GUARD_MEMORY_LIMIT": "512MB", "RUNTIME_GUARD_INTERVAL": "0.5"}
    config = Config.from_options({"interval": 2}, environ=env)
    assert config.memory_limit == 512 * 10**6
    assert config.interval == 2.0


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"memory_limit": "lots"}, ["memory_limit='lots'", '"512MB"']),
        ({"high": 1.7}, ["high=1.7", "between 0 and 1"]),
        ({"interval": 0}, ["interval=0", "greater than 0"]),
        ({"tracemalloc": "sometimes"}, ["tracemalloc='sometimes'", "'on-demand'"]),
        ({"emergency": "maybe"}, ["emergency='maybe'", "true or false"]),
        ({"history_size": 1}, ["history_size=1", "at least 2"]),
        ({"memroy_limit": "1GB"}, ["unknown option 'memroy_limit'", "memory_limit"]),
    ],
)
def test_bad_keyword_names_option_value_and_form(
    options: dict[str, object], words: list[str]
) -> None:
    """A bad keyword raises ConfigError naming the option, the value and the accepted form."""
    with pytest.raises(ConfigError) as info:
        Config.from_options(options, environ={})
    for word in words:
        assert word in str(info.value)


def test_bad_environment_variable_is_named() -> None:
    """A bad variable is the same error, naming the variable."""
    with pytest.raises(ConfigError, match=r"RUNTIME_GUARD_HIGH='1\.7'"):
        Config.from_options({}, environ={"RUNTIME_GUARD_HIGH": "1.7"})


def test_config_error_is_a_value_error() -> None:
    """Callers that catch ValueError catch configuration errors too."""
    assert issubclass(ConfigError, ValueError)


def test_thresholds_out_of_order() -> None:
    """elevated < high < critical is enforced, with all three values in the message."""
    with pytest.raises(ConfigError, match=r"elevated=0\.9, high=0\.85, critical=0\.95"):
        Config.from_options({"elevated": 0.9}, environ={})


def test_order_error_names_the_variable_that_broke_it() -> None:
    """When a variable puts thresholds out of order, the message names that variable."""
    with pytest.raises(ConfigError, match=r"RUNTIME_GUARD_ELEVATED=0\.9, high=0\.85"):
        Config.from_options({}, environ={"RUNTIME_GUARD_ELEVATED": "0.9"})


def test_booleans_from_environment() -> None:
    """1/0, yes/no, on/off and true/false are all understood."""
    assert Config.from_options({}, environ={"RUNTIME_GUARD_EMERGENCY": "1"}).emergency
    assert not Config.from_options({}, environ={"RUNTIME_GUARD_TRACK_CLIENTS": "off"}).track_clients


def test_describe_lists_every_option() -> None:
    """The options table covers every field with a doc line."""
    rows = Config.describe()
    assert {name for name, _, _ in rows} >= {"memory_limit", "interval", "high", "report_dir"}
    assert all(doc for _, _, doc in rows)


_VALUES = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
)


@given(st.sampled_from([f.name for f in dataclasses.fields(Config)]), _VALUES)
@settings(max_examples=600, deadline=None)
def test_any_keyword_value_is_accepted_or_a_config_error_naming_it(
    name: str, value: object
) -> None:
    """Every option, given anything, yields a Config or a ConfigError that names the option."""
    try:
        Config.from_options({name: value}, environ={})
    except ConfigError as exc:
        assert name in str(exc)


@given(st.sampled_from([f.name for f in dataclasses.fields(Config)]), st.text(max_size=30))
@settings(max_examples=600, deadline=None)
def test_any_environment_value_is_accepted_or_a_config_error_naming_the_variable(
    name: str, value: str
) -> None:
    """Every RUNTIME_GUARD_* variable, set to any text, is read or names itself in the error."""
    variable = env_name(name)
    try:
        Config.from_options({}, environ={variable: value})
    except ConfigError as exc:
        assert variable in str(exc)


@pytest.mark.parametrize(
    ("option", "value", "accepted"),
    [
        ("checkout_warn_after", 0, "greater than 0"),
        ("pool_exhausted_after", "soon", "a number"),
        ("resource_window", -1, "greater than 0"),
        ("resource_min_growth", 0, "at least 1"),
        ("loop_lag_threshold", "nan", "a number"),
        ("loop_lag_pressure", "loud", "'high' or 'critical', or 'off'"),
        ("track_resources", "maybe", "true or false"),
    ],
)
def test_resource_options_fail_at_install_naming_the_option(
    option: str, value: object, accepted: str
) -> None:
    """A bad resource option fails at install() with its name and the accepted form."""
    with pytest.raises(ConfigError, match=option) as info:
        runtime_guard.install(**{option: value})
    assert accepted in str(info.value)
    assert runtime_guard.get_guard() is None


def test_loop_lag_pressure_takes_a_level_or_off_from_the_environment() -> None:
    """RUNTIME_GUARD_LOOP_LAG_PRESSURE=high and =off are read as the level and as None."""
    on = Config.from_options({}, environ={"RUNTIME_GUARD_LOOP_LAG_PRESSURE": "HIGH"})
    off = Config.from_options({}, environ={"RUNTIME_GUARD_LOOP_LAG_PRESSURE": "off"})
    assert (on.loop_lag_pressure, off.loop_lag_pressure) == ("high", None)
