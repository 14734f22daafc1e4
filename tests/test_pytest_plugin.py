"""The pytest plugin, run the way users run it: real test files in pytest subprocesses."""

from __future__ import annotations

import re
import textwrap

import pytest

pytest_plugins = ["pytester"]

# Known-leaky bodies: each leaking line carries a "# LEAK: <name>" comment so the test can
# check that the failure names that very line.
LEAKY = """
import itertools

import pytest

ids = itertools.count()

EVENTS = []


def record_event(request_id):
    EVENTS.append({"id": request_id, "path": "/items/%d" % request_id})  # LEAK: list


_CACHE = {}


def lookup(key):
    if key not in _CACHE:
        _CACHE[key] = ("value-%s" % key) * 10  # LEAK: dict
    return _CACHE[key]


_LOGS = []


def open_log(path):
    handle = open(path, "a")  # LEAK: file
    handle.write("started\\n")
    _LOGS.append(handle)


_HANDLERS = []


def subscribe(topic):
    def on_message(message):  # LEAK: closure
        return topic, message

    _HANDLERS.append(on_message)


@pytest.mark.no_leaks
def test_list_append():
    for _ in range(200):
        record_event(next(ids))


@pytest.mark.no_leaks
def test_dict_cache():
    for _ in range(200):
        lookup(next(ids))


@pytest.mark.no_leaks
def test_open_file(tmp_path):
    open_log(tmp_path / ("%d.log" % next(ids)))


@pytest.mark.no_leaks
def test_closure_registry():
    for _ in range(200):
        subscribe("topic-%d" % next(ids))
"""

# Clean bodies that fool naive leak checks: first-call state, bounded caches, interpreter
# caches, pytest's own capture.
CLEAN = """
import functools
import itertools
import logging
import re
import sys
import warnings

import pytest

ids = itertools.count()
log = logging.getLogger("app")

_settings = None


def settings():
    global _settings
    if _settings is None:
        _settings = {"key-%d" % i: list(range(50)) for i in range(500)}
    return _settings


@functools.lru_cache(maxsize=128)
def render(n):
    return "<p>%d</p>" % n * 20


@pytest.mark.no_leaks
def test_lazy_singleton():
    assert settings()["key-1"][1] == 1


@pytest.mark.no_leaks
def test_bounded_lru_cache():
    for _ in range(100):
        render(next(ids))


@pytest.mark.no_leaks
def test_re_compile_cache():
    for _ in range(100):
        assert re.compile(r"item-%d-(\\w+)" % next(ids)).match("item-1-x") is None


@pytest.mark.no_leaks
def test_logging():
    for _ in range(20):
        log.warning("request %s handled", next(ids))


@pytest.mark.no_leaks
def test_string_interning():
    for _ in range(1000):
        sys.intern("key-%d" % next(ids))


@pytest.mark.no_leaks
def test_print_under_capture():
    for _ in range(100):
        print("handled request", next(ids))


@pytest.mark.no_leaks
def test_warning_once():
    warnings.warn("call() is deprecated", UserWarning)
"""


def _line(source: str, marker: str) -> int:
    """1-based line number of the line carrying ``# LEAK: marker``."""
    for number, line in enumerate(source.splitlines(), start=1):
        if line.rstrip().endswith(f"# LEAK: {marker}"):
            return number
    raise AssertionError(f"no line marked {marker!r}")


def _section(output: str, test: str) -> str:
    """The failure section of ``test`` in pytest's output."""
    match = re.search(
        rf"_{{3,}} {re.escape(test)} _{{3,}}\n(.*?)(?=\n_{{3,}} |\n={{3,}} )", output, re.S
    )
    assert match is not None, f"no failure section for {test}:\n{output}"
    return match.group(1)


def _write(pytester: pytest.Pytester, name: str, source: str) -> str:
    source = textwrap.dedent(source).lstrip("\n")
    pytester.makepyfile(**{name: source})
    return source


def test_known_leaky_bodies_fail_naming_the_leaking_line(pytester: pytest.Pytester) -> None:
    """Each known-leaky body fails, and its failure names the line that leaks."""
    source = _write(pytester, "test_leaky", LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=4)
    output = result.stdout.str()
    for test, marker, function in [
        ("test_list_append", "list", "record_event"),
        ("test_dict_cache", "dict", "lookup"),
        ("test_closure_registry", "closure", "subscribe"),
    ]:
        section = _section(output, test)
        assert "Python heap grew in every round" in section
        assert re.search(r"blocks/round\) over 5 rounds", section)
        assert f"test_leaky.py:{_line(source, marker)} in {function}" in section, section
    opened = _section(output, "test_open_file")
    assert "open file descriptors grew in every round: +1 fds/round over 5 rounds" in opened
    assert f"FileIO opened at test_leaky.py:{_line(source, 'file')}" in opened, opened
    assert ".log" in opened


def test_referrer_chain_names_the_module_level_root(pytester: pytest.Pytester) -> None:
    """The failure shows which module-level name holds the leaked objects."""
    _write(pytester, "test_leaky", LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "list_append")
    result.assert_outcomes(failed=1)
    section = _section(result.stdout.str(), "test_list_append")
    assert "held by: test_leaky.EVENTS (list) -> dict" in section, section
    assert "growing types (per round): dict +200" in section, section


@pytest.mark.parametrize("attempt", range(3))
def test_clean_bodies_pass_every_time(pytester: pytest.Pytester, attempt: int) -> None:
    """Bodies with first-call state and bounded caches pass, run after run."""
    _write(pytester, "test_clean", CLEAN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7, warnings=1)


REDIS = """
import atexit
import os

import pytest
import redis

URL = os.environ["LEAK_TEST_REDIS_URL"]


def fetch_user(user_id):
    client = redis.Redis.from_url(URL)  # LEAK: redis
    atexit.register(client.close)  # "closed at exit": alive, and connected, until then
    return client.get("user:%d" % user_id)


_shared = None


def shared_client():
    global _shared
    if _shared is None:
        _shared = redis.Redis.from_url(URL)
    return _shared


@pytest.mark.no_leaks
def test_client_per_call():
    fetch_user(1)


@pytest.mark.no_leaks
def test_shared_client():
    shared_client().get("user:1")


@pytest.mark.no_leaks
def test_client_closed_each_call():
    with redis.Redis.from_url(URL) as client:
        client.get("user:1")
"""


@pytest.mark.slow
def test_redis_client_per_call_fails_naming_its_creation_site(
    pytester: pytest.Pytester, redis_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client made per call and never closed fails with its creation line; reuse passes."""
    monkeypatch.setenv("LEAK_TEST_REDIS_URL", redis_server.url)  # type: ignore[attr-defined]
    source = _write(pytester, "test_redis_leak", REDIS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--durations=5")
    result.assert_outcomes(failed=1, passed=2)
    section = _section(result.stdout.str(), "test_client_per_call")
    line = _line(source, "redis")
    assert "open file descriptors grew in every round: +1 fds/round" in section, section
    assert re.search(r"unreleased tracked clients grew in every round: \+\d clients/round", section)
    assert re.search(
        rf"\d+ x redis.Redis created at test_redis_leak.py:{line} in fetch_user", section
    )
    assert "socket.socket opened at" in section or "socket:[" in section
