"""The demo's parts that do not need a server: display, option choice, client-site choice."""

from __future__ import annotations

import dataclasses
import io
import time

from runtime_guard.cli import demo as _demo
from runtime_guard.config import Config


def _state() -> _demo._State:
    state = _demo._State(started=time.monotonic(), usage=150 * 2**20, limit=200 * 2**20)
    state.fraction, state.pressure, state.phase = 0.75, "elevated", "phase 2/4"
    return state


def test_terminal_display_redraws_its_block_in_place() -> None:
    """On a terminal, event lines scroll above a status block that is cleared and redrawn."""
    out = io.StringIO()
    display = _demo._Display(out, live=True)
    state = _state()
    display.status(state, 60)
    display.line(state, "pressure OK -> ELEVATED")
    text = out.getvalue()
    assert "usage    " in text and "75%" in text
    assert "\x1b[4F\x1b[J" in text  # back over the four status lines, then clear below
    assert text.index("pressure OK -> ELEVATED") > text.index("\x1b[4F")
    display.finish()
    assert out.getvalue().endswith("\x1b[J")


def test_plain_display_prints_lines_only() -> None:
    """Not on a terminal: timestamped lines, no escape sequences, no status block."""
    out = io.StringIO()
    display = _demo._Display(out, live=False)
    state = _state()
    display.status(state, 60)
    display.line(state, "feature shed analytics")
    assert "\x1b" not in out.getvalue()
    assert out.getvalue().endswith("feature shed analytics\n")


def test_demo_options_are_valid_for_this_version() -> None:
    """The shortened timescales are options this Config knows and accepts."""
    options = _demo._demo_options(20)
    known = {f.name for f in dataclasses.fields(Config)}
    assert set(options) <= known
    Config.from_options(options, environ={})


def test_client_site_prefers_the_client_over_its_socket() -> None:
    """The summary names the client class that was leaked, not the socket inside it."""
    data = {
        "unreleased": {
            "types": {
                "socket.socket": {"sites": [{"site": "shop.py:57", "unreleased": 90}]},
                "redis.Redis": {"sites": [{"site": "shop.py:56", "unreleased": 40}]},
            }
        }
    }
    assert _demo._top_client_site(data) == ("redis.Redis", {"site": "shop.py:56", "unreleased": 40})
    assert _demo._top_client_site({}) is None
