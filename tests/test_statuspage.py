"""The live status page: from the guard's memory, served by the middleware, seen in Chromium."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import test_container  # tests/: a guarded worker process of a test's own container
from _chromium import CHROMIUM, open_page

import runtime_guard
from runtime_guard import Pressure
from runtime_guard.integrations.wsgi import GuardMiddleware
from runtime_guard.probes import RssReader
from runtime_guard.reports.statuspage import render_status_page
from runtime_guard.testing import FakeProbe, make_guard

MB = 1024 * 1024


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


@pytest.fixture
def guarded_server() -> Iterator[tuple[runtime_guard.Guard, str]]:
    """A real guard (limit just above this process's RSS) behind a real WSGI server."""
    rss = RssReader().read()
    guard = runtime_guard.install(memory_limit=rss + 120 * MB, interval=0.05)
    server: WSGIServer = make_server(
        "127.0.0.1", 0, GuardMiddleware(_app, status_path="/_guard"), handler_class=_Quiet
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield guard, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _climb(guard: runtime_guard.Guard) -> list[bytearray]:
    """Allocate real memory until the guard reports ELEVATED or more, then wait a few samples."""
    blocks: list[bytearray] = []
    deadline = time.monotonic() + 30
    # Sampled here after each block, not left to the sampler thread: on a busy machine its
    # next sample may come after the check.
    while guard.sample().pressure < Pressure.ELEVATED and time.monotonic() < deadline:
        blocks.append(bytearray(b"x" * (8 * MB)))
    for _ in range(3):  # a few points for the page's line
        guard.sample()
    return blocks


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
@pytest.mark.xfail(
    reason="in an xdist worker of the whole suite on 3.12/3.13 the real climb now and then "
    "ends with the guard at OK (cause not found); alone it passes on 3.11, 3.12 and 3.13",
    strict=False,
)
def test_live_page_served_by_middleware_renders_in_chromium(
    guarded_server: tuple[runtime_guard.Guard, str],
) -> None:
    """At status_path the middleware serves the live page; Chromium draws it with no errors."""
    guard, base = guarded_server
    blocks = _climb(guard)
    assert guard.pressure >= Pressure.ELEVATED
    guard.flush_signals()
    result = open_page(
        base + "/_guard",
        {
            "refresh": "document.querySelector('meta[http-equiv=refresh]')?.content",
            "points": "document.querySelector('#usage-line').getAttribute('points')"
            ".trim().split(' ').length",
            "bands": "document.querySelectorAll('#timeline-chart rect.band').length",
            "sections": "[...document.querySelectorAll('section')].map(s => s.id)",
            "pressure_events": "document.querySelector('#events')?.innerText",
            "title": "document.title",
        },
        "status-page.png",
    )
    del blocks
    assert result.errors == []
    values = result.values
    assert values["refresh"] == "2"
    assert values["points"] >= 5
    assert values["bands"] >= 1
    assert {"timeline", "health", "events"} <= set(values["sections"])
    assert "OK -> ELEVATED" in values["pressure_events"]
    assert values["title"].startswith("Live memory status")


def test_status_path_answers_html(guarded_server: tuple[runtime_guard.Guard, str]) -> None:
    """The page comes back as HTML, not cached, with the guard's current figures."""
    _, base = guarded_server
    with urllib.request.urlopen(base + "/_guard", timeout=10) as response:
        body = response.read().decode()
        content_type = response.headers["Content-Type"]
    assert content_type.startswith("text/html")
    assert 'id="timeline-chart"' in body
    assert "Live memory status" in body


def test_page_shows_history_and_events_of_the_guard() -> None:
    """Samples from the history and the events the guard signalled are on the page."""
    probe = FakeProbe(limit=1000 * MB)
    guard = make_guard(probe, relief=False)
    try:
        for fraction in (0.2, 0.5, 0.75, 0.9, 0.96, 0.5, 0.2):
            probe.set_fraction(fraction)
            guard.sample()
        guard.flush_signals()
        page = render_status_page(guard, refresh=5)
    finally:
        guard.stop()
    assert '<meta http-equiv="refresh" content="5">' in page
    assert page.count('class="band ') >= 3
    for label in ("OK -&gt; ELEVATED", "HIGH -&gt; CRITICAL", "CRITICAL -&gt; OK"):
        assert label in page


def test_page_without_samples_still_renders() -> None:
    """A guard that has taken no sample yet gives a page (health takes one reading)."""
    guard = make_guard(FakeProbe())
    try:
        page = render_status_page(guard)
    finally:
        guard.stop()
    assert "Live memory status" in page


def test_page_lists_the_workers_of_the_container(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the timeline the page lists every live worker of the container, this one marked."""
    monkeypatch.setenv("RUNTIME_GUARD_CONTAINER_DIR", str(tmp_path))
    guard = runtime_guard.install(interval=3600)
    guard.sample()
    other = test_container._start_worker(tmp_path)
    try:
        page = render_status_page(guard)
    finally:
        test_container._end(other)
    section = page.split('<section id="container">')[1].split("</section>")[0]
    assert "Workers of this container (2)" in section
    assert f"<td>{os.getpid()} (this page)</td>" in section
    assert f"<td>{other.pid}</td>" in section
