"""WSGI middleware: health route, 503 + Retry-After while critical, exempt routes, detail."""

from __future__ import annotations

import gc
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import setup_testing_defaults

import pytest

import runtime_guard
from runtime_guard import Pressure
from runtime_guard.config import ConfigError
from runtime_guard.integrations._http import public_health
from runtime_guard.integrations.wsgi import GuardMiddleware
from runtime_guard.probes import RssReader
from runtime_guard.testing import FakeProbe, make_guard


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello " + environ["PATH_INFO"].encode()]


def call(app: Any, path: str, **extra: str) -> tuple[int, dict[str, str], bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REMOTE_ADDR": "127.0.0.1"}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    environ.update(extra)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return int(seen["status"].split()[0]), seen["headers"], body


@pytest.fixture
def fake() -> Iterator[tuple[FakeProbe, runtime_guard.Guard]]:
    probe = FakeProbe()
    guard = make_guard(probe)
    yield probe, guard
    guard.stop()


def at(probe: FakeProbe, guard: runtime_guard.Guard, fraction: float) -> None:
    probe.set_fraction(fraction)
    guard.sample()


def test_requests_pass_while_not_critical(fake: Any) -> None:
    """Below ``shed_at`` every request reaches the app untouched."""
    probe, guard = fake
    app = GuardMiddleware(hello, guard=guard)
    at(probe, guard, 0.90)
    assert guard.pressure == Pressure.HIGH
    assert call(app, "/work") == (200, {"Content-Type": "text/plain"}, b"hello /work")


def test_critical_refuses_with_retry_after_except_exempt(fake: Any) -> None:
    """While critical, non-exempt requests get 503 + Retry-After; exempt ones still pass."""
    probe, guard = fake
    app = GuardMiddleware(hello, guard=guard, retry_after=7, exempt=("/admin", "/static/"))
    at(probe, guard, 0.97)
    code, headers, body = call(app, "/work")
    assert code == 503
    assert headers["Retry-After"] == "7"
    assert headers["X-Runtime-Guard-Pressure"] == "critical"
    assert json.loads(body) == {"error": "overloaded", "retry_after": 7}
    assert call(app, "/admin")[0] == 200
    assert call(app, "/admin/users")[0] == 200
    assert call(app, "/static/app.css")[0] == 200
    assert call(app, "/administrator")[0] == 503  # a prefix matches whole path segments


def test_shed_at_high_refuses_earlier_and_recovers(fake: Any) -> None:
    """``shed_at="high"`` refuses from HIGH on, and requests pass again once pressure falls."""
    probe, guard = fake
    app = GuardMiddleware(hello, guard=guard, shed_at="high")
    at(probe, guard, 0.87)
    assert call(app, "/x")[0] == 503
    at(probe, guard, 0.50)
    assert call(app, "/x")[0] == 200


def test_health_codes_follow_status(fake: Any) -> None:
    """The health route answers 200 when ok or degraded and 503 when critical."""
    probe, guard = fake
    app = GuardMiddleware(hello, guard=guard)
    at(probe, guard, 0.10)
    code, headers, body = call(app, "/health")
    assert (code, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body)["status"] == "ok"
    at(probe, guard, 0.90)
    code, _, body = call(app, "/health")
    assert (code, json.loads(body)["status"]) == (200, "degraded")
    at(probe, guard, 0.97)
    code, _, body = call(app, "/health")
    assert (code, json.loads(body)["status"]) == (503, "critical")


def test_health_carries_figures_only_unless_detail(fake: Any) -> None:
    """By default the health body has no source paths; ``detail=True`` returns health() whole."""
    probe, guard = fake
    at(probe, guard, 0.10)
    body = json.loads(call(GuardMiddleware(hello, guard=guard), "/health")[2])
    assert "sources" not in body
    assert body["limit_bytes"] == probe.limit
    assert isinstance(body["suspected_leaks"], int)
    detailed = json.loads(call(GuardMiddleware(hello, guard=guard, detail=True), "/health")[2])
    assert detailed["sources"] == probe.sources


def test_public_health_drops_text_and_keeps_counts() -> None:
    """Leak reports become a count, unreleased objects counts by type, strings are dropped."""
    data = {
        "status": "degraded",
        "usage_bytes": 10,
        "sources": {"limit": "/sys/fs/cgroup/x"},
        "suspected_leaks": [{"line": "app.py:12 cache.append(x)"}],
        "unreleased_objects": {"redis.Redis": {"count": 40, "sites": ["app.py:3"]}},
        "shed_features": ["analytics"],
        "emergency": False,
        "note": "/secret/path",
    }
    assert public_health(data) == {
        "status": "degraded",
        "usage_bytes": 10,
        "suspected_leaks": 1,
        "unreleased_objects": {"redis.Redis": 40},
        "shed_features": ["analytics"],
        "emergency": False,
    }


def test_without_a_guard_routes_still_answer() -> None:
    """With no guard installed the app serves and the health route says so with 200."""
    app = GuardMiddleware(hello)
    assert call(app, "/x")[0] == 200
    code, _, body = call(app, "/health")
    assert code == 200
    assert json.loads(body)["guard"] == "not installed"


def test_process_wide_guard_is_found_at_request_time() -> None:
    """A middleware built before install() acts on the guard installed later."""
    app = GuardMiddleware(hello)
    rss = RssReader().read()
    runtime_guard.install(memory_limit=rss // 2, interval=60)
    runtime_guard.get_guard().sample()  # type: ignore[union-attr]
    assert call(app, "/x")[0] == 503


def test_status_page_is_off_by_default_and_served_when_asked(fake: Any) -> None:
    """``status_path`` serves the live HTML page; without it the path reaches the app."""
    probe, guard = fake
    at(probe, guard, 0.2)
    assert call(GuardMiddleware(hello, guard=guard), "/status")[2] == b"hello /status"
    code, headers, body = call(
        GuardMiddleware(hello, guard=guard, status_path="/status"), "/status"
    )
    assert code == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b"<html" in body.lower()


def test_status_page_needs_loopback_or_the_token(
    fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a token only unproxied loopback clients see the page; with one, only its bearer."""
    monkeypatch.delenv("RUNTIME_GUARD_STATUS_TOKEN", raising=False)
    app = GuardMiddleware(hello, guard=fake[1], status_path="/status")
    assert call(app, "/status", REMOTE_ADDR="10.1.2.3")[0] == 403
    assert call(app, "/status", REMOTE_ADDR="::1")[0] == 200
    assert call(app, "/status", REMOTE_ADDR="::ffff:127.0.0.1")[0] == 200
    assert call(app, "/status", HTTP_X_FORWARDED_FOR="203.0.113.9")[0] == 403
    code, headers, body = call(app, "/status", REMOTE_ADDR="")
    assert (code, headers["Cache-Control"]) == (403, "no-store")
    assert b"<" not in body
    app = GuardMiddleware(hello, guard=fake[1], status_path="/status", status_token="s3cret")
    assert call(app, "/status", REMOTE_ADDR="10.1.2.3")[0] == 403
    assert call(app, "/status")[0] == 403  # a token, once set, is asked of loopback too
    bearer = {"REMOTE_ADDR": "10.1.2.3", "HTTP_AUTHORIZATION": "Bearer s3cret"}
    assert call(app, "/status", **bearer)[0] == 200
    assert call(app, "/status", REMOTE_ADDR="10.1.2.3", QUERY_STRING="token=s3cret")[0] == 200
    assert call(app, "/status", REMOTE_ADDR="10.1.2.3", QUERY_STRING="token=s3cre")[0] == 403
    wrong = {"REMOTE_ADDR": "10.1.2.3", "HTTP_AUTHORIZATION": "Bearer \u00e9t\u00e9"}
    assert call(app, "/status", **wrong)[0] == 403
    monkeypatch.setenv("RUNTIME_GUARD_STATUS_TOKEN", "from-env")
    app = GuardMiddleware(hello, guard=fake[1], status_path="/status")
    assert call(app, "/status", HTTP_AUTHORIZATION="bearer from-env")[0] == 200
    assert "from-env" not in repr(app.routes)


def test_detailed_health_falls_back_to_figures_for_other_clients(
    fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``detail=True`` shows sources to loopback or token holders; others get figures, same code."""
    monkeypatch.delenv("RUNTIME_GUARD_STATUS_TOKEN", raising=False)
    probe, guard = fake
    at(probe, guard, 0.10)
    app = GuardMiddleware(hello, guard=guard, detail=True)
    code, _, body = call(app, "/health", REMOTE_ADDR="192.0.2.7")
    assert code == 200
    assert "sources" not in json.loads(body)
    assert json.loads(call(app, "/health")[2])["sources"] == probe.sources
    app = GuardMiddleware(hello, guard=guard, detail=True, status_token="t")
    assert "sources" not in json.loads(call(app, "/health")[2])
    body = call(app, "/health", REMOTE_ADDR="192.0.2.7", QUERY_STRING="a=1&token=t")[2]
    assert json.loads(body)["sources"] == probe.sources


def test_bad_options_fail_loudly() -> None:
    """Bad middleware options raise ConfigError naming the option."""
    with pytest.raises(ConfigError, match="shed_at"):
        GuardMiddleware(hello, shed_at="sometimes")
    with pytest.raises(ConfigError, match="retry_after"):
        GuardMiddleware(hello, retry_after=-1)
    with pytest.raises(ConfigError, match="exempt"):
        GuardMiddleware(hello, exempt=("admin",))
    with pytest.raises(ConfigError, match="status_token"):
        GuardMiddleware(hello, status_token=" ")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_real_server_refuses_while_real_memory_is_critical() -> None:
    """Real server, real probe: an allocation past the limit brings 503s; freeing it ends them."""
    baseline = RssReader().read()
    chunk = 200 * 1024 * 1024
    limit = baseline + chunk  # critical at 95 %: the chunk takes usage past it
    guard = runtime_guard.install(memory_limit=limit, interval=0.05)
    server: WSGIServer = make_server("127.0.0.1", 0, GuardMiddleware(hello), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"

    def wait_for(level: Pressure) -> None:
        deadline = time.monotonic() + 20
        while guard.pressure != level and time.monotonic() < deadline:
            time.sleep(0.05)
        assert guard.pressure == level

    try:
        assert _get(base + "/work")[0] == 200
        hog = bytearray(chunk)
        hog[::4096] = b"x" * len(range(0, chunk, 4096))  # touch every page: real RSS
        wait_for(Pressure.CRITICAL)
        code, headers = _get(base + "/work")
        assert (code, headers["Retry-After"]) == (503, "10")
        assert _get(base + "/health")[0] == 503
        del hog
        gc.collect()
        wait_for(Pressure.OK)
        assert _get(base + "/work")[0] == 200
        assert _get(base + "/health")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
