"""pytest plugin (``pytest11`` entry point): leak tests built on the guard's machinery.

Only wiring lives here: markers, options, the ``leak_check`` fixture and the hook that
reruns a marked test body. Measuring and judging is :mod:`runtime_guard._leakcheck`, which
is imported only once a test asks for a check, so unmarked tests run exactly as without
the plugin.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

# Imported with the plugin, before any test module: the objects frozen then are the
# interpreter's own (see FROZEN_AT_START).
from runtime_guard import _interpreter
from runtime_guard._units import SIZE_FORM, parse_size
from runtime_guard.config import env_name

if TYPE_CHECKING:
    from runtime_guard._leakcheck import LeakChecker, LeakCheckOptions

__all__ = ["leak_check"]

_MARKERS = (
    "no_leaks(rounds=4, warmup=2, tolerance='100B', track=(), check=('heap', 'objects', "
    "'fds', 'threads', 'tasks')): rerun the test body (warm-up calls, then rounds of calls) "
    "and fail when a figure grew in every measured round (runtime_guard)",
    "no_unreleased(*types): fail when a tracked client (of these types, or of any tracked "
    "type) created during the test is neither released nor collected by its end "
    "(runtime_guard)",
)


@dataclass(frozen=True)
class _Settings:
    enabled: bool
    """``--leak-check``: apply ``no_leaks`` with the defaults to every test."""
    rounds: int | None
    """Default measured rounds, when set by option, environment or ini."""
    tolerance: str | int | None
    """Default tolerance as written, when set by option, environment or ini."""
    verbose: bool
    """Full failure detail (``-v``)."""


_SETTINGS = pytest.StashKey[_Settings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runtime_guard", "leak tests (runtime_guard)")
    group.addoption(
        "--leak-check",
        action="store_true",
        default=None,
        dest="leak_check",
        help="check every test for leaks as if marked no_leaks "
        f"(also {env_name('leak_check')}=1 or ini leak_check = true)",
    )
    group.addoption(
        "--leak-check-rounds",
        default=None,
        dest="leak_check_rounds",
        metavar="N",
        help=f"default measured rounds of a leak check (also {env_name('leak_check_rounds')} "
        "or ini leak_check_rounds; default 4)",
    )
    group.addoption(
        "--leak-check-tolerance",
        default=None,
        dest="leak_check_tolerance",
        metavar="SIZE",
        help="default growth per call a leak check forgives, e.g. 1KB (also "
        f"{env_name('leak_check_tolerance')} or ini leak_check_tolerance; default 100B)",
    )
    parser.addini("leak_check", "check every test for leaks (runtime_guard)", type="bool")
    parser.addini("leak_check_rounds", "default measured rounds of a leak check", default="")
    parser.addini("leak_check_tolerance", "default per-call tolerance of a leak check", default="")


def _setting(config: pytest.Config, name: str) -> tuple[Any, str] | None:
    """The raw value of option ``name`` and where it came from: CLI > environment > ini."""
    value = config.getoption(name)
    if value is not None:
        return value, "--" + name.replace("_", "-")
    variable = env_name(name)
    if os.environ.get(variable, "").strip():
        return os.environ[variable].strip(), variable
    ini = config.getini(name)
    if ini not in ("", None, []) and not (name == "leak_check" and ini is False):
        return ini, f"ini {name}"
    return None


def _resolve(config: pytest.Config) -> _Settings:
    enabled = False
    found = _setting(config, "leak_check")
    if found is not None:
        value, where = found
        if isinstance(value, bool):
            enabled = value
        elif str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            enabled = str(value).lower() in ("1", "true", "yes", "on")
        else:
            raise pytest.UsageError(
                f"{where}={_arg(value)} is not accepted: expected true or false"
            )
    rounds: int | None = None
    found = _setting(config, "leak_check_rounds")
    if found is not None:
        value, where = found
        text = str(value).strip()
        # isdecimal: int() refuses some isdigit() text ("²") and more than 4,300 digits.
        if not text.isdecimal() or len(text) > 18 or int(text) < 1:
            raise pytest.UsageError(
                f"{where}={_arg(value)} is not accepted: expected a whole number of at least 1"
            )
        rounds = int(text)
    tolerance: str | None = None
    found = _setting(config, "leak_check_tolerance")
    if found is not None:
        value, where = found
        try:
            parse_size(str(value))
        except ValueError:
            raise pytest.UsageError(
                f"{where}={_arg(value)} is not accepted: expected {SIZE_FORM}"
            ) from None
        tolerance = str(value)
    return _Settings(enabled, rounds, tolerance, config.get_verbosity() > 0)


def _arg(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def pytest_configure(config: pytest.Config) -> None:
    for line in _MARKERS:
        config.addinivalue_line("markers", line)
    config.stash[_SETTINGS] = _resolve(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    unread = _interpreter.HEAP_BLOCKS_UNREAD
    if unread is None:
        return []
    return [
        "runtime_guard: leak checks count small objects from tracemalloc's traces, every "
        f"round traced (slower): {unread}"
    ]


def _defaults(settings: _Settings) -> LeakCheckOptions:
    from runtime_guard._leakcheck import LeakCheckOptions

    return LeakCheckOptions().replace(rounds=settings.rounds, tolerance=settings.tolerance)


def _fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


def _marker_options(item: pytest.Function, settings: _Settings) -> LeakCheckOptions | None:
    """The check a test asked for (marker, ``--leak-check``), or None when it asked for none."""
    leaks = item.get_closest_marker("no_leaks")
    unreleased = item.get_closest_marker("no_unreleased")
    if leaks is None and unreleased is None and not settings.enabled:
        return None
    options = _defaults(settings)
    try:
        if leaks is not None:
            if leaks.args:
                raise ValueError("no_leaks takes keyword arguments only")
            options = options.replace(**leaks.kwargs)
        if unreleased is not None:
            if unreleased.kwargs:
                raise ValueError("no_unreleased takes classes or dotted names only")
            options = options.replace(track=options.track + unreleased.args, unreleased=True)
    except ValueError as exc:
        _fail(f"{item.nodeid}: {exc}")
    if options.track:
        options = options.replace(unreleased=True)
    if leaks is None and not settings.enabled:
        return options.once()
    return options


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    settings = pyfuncitem.config.stash[_SETTINGS]
    options = _marker_options(pyfuncitem, settings)
    original = pyfuncitem.obj
    if options is None:
        return (yield)
    from runtime_guard._leakcheck import LeakCheck

    check = LeakCheck(options, label=pyfuncitem.nodeid)
    if inspect.iscoroutinefunction(original):
        # A coroutine function is run by an async plugin's own hook (anyio's, for one),
        # which awaits whatever it finds here: the rounds run inside its event loop.
        async def repeated_async(*args: Any, **kwargs: Any) -> None:
            check.roots.append(("fixture", kwargs))
            with contextlib.closing(check.runs()) as runs:
                for _ in runs:
                    await original(*args, **kwargs)

        pyfuncitem.obj = repeated_async
    else:

        def repeated(*args: Any, **kwargs: Any) -> None:
            # The test's own frame is gone when the diagnosis runs; its fixtures are here.
            check.roots.append(("fixture", kwargs))
            with contextlib.closing(check.runs()) as runs:
                for _ in runs:
                    original(*args, **kwargs)

        pyfuncitem.obj = repeated
    try:
        outcome = yield
    finally:
        # Plugins that call this hook again (reruns) must find the test, not our wrapper.
        pyfuncitem.obj = original
    if check.result.leaked:
        _fail(check.result.message(settings.verbose))
    if not check.finished:
        # Passing unchecked would read as "no leak": a plugin ran the test its own way.
        _fail(
            f"{pyfuncitem.nodeid}: the leak check did not run: the test function was not "
            "called through pytest's call hook (a plugin ran it its own way)"
        )
    return outcome


@pytest.fixture
def leak_check(request: pytest.FixtureRequest) -> LeakChecker:
    """Check a callable or a block for leaks: ``leak_check(fn, *args, rounds=4, ...)``.

    For a coroutine function, ``leak_check`` runs it on its own event loop in a sync test
    and must be awaited in an async one. As a context manager it hands out the rounds::

        with leak_check(rounds=4) as rounds:
            for _ in rounds:
                handler()
    """
    from runtime_guard._leakcheck import LeakChecker

    settings = request.config.stash[_SETTINGS]
    fail: Callable[[str], NoReturn] = _fail
    return LeakChecker(_defaults(settings), fail, verbose=settings.verbose)
