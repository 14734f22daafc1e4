"""The ASGI middleware under real ASGI servers: every route answers well-formed, no server errs.

Each server runs as a subprocess on a free loopback port and serves a small FastAPI app
behind the middleware; the client in the test process speaks HTTP/1.1 and websockets to it.
Pressure is real: the app's ``process_limit`` is three times its own RSS at start, and a
route outside the middleware's reach allocates (and later frees) as much again, which takes
the process's own usage past critical and back.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import servers
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Subprotocol

pytestmark = pytest.mark.timeout(120)

APP = textwrap.dedent(
    """
    import psutil
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import PlainTextResponse

    import runtime_guard
    from runtime_guard.integrations.asgi import GuardMiddleware, lifespan

    RSS = psutil.Process().memory_info().rss
    runtime_guard.feature("websockets", shed_at="high")
    options = dict(
        # A third of it at start: far enough below elevated that what the server and the
        # guard's routes add to the RSS over the tests never makes it elevated.
        process_limit=3 * RSS,
        memory_limit="1TiB",  # the machine's other processes never add pressure here
        interval=0.05,
        restart_after="off",
        leak_detection=False,
    )
    api = FastAPI(lifespan=lifespan(recycle=False, **options))
    held = []

    @api.api_route("/hello", methods=["GET", "POST"])
    async def hello(request: Request) -> PlainTextResponse:
        body = await request.body()
        return PlainTextResponse(f"hello {len(body)}")

    @api.post("/_test/allocate")
    def allocate() -> PlainTextResponse:
        held.append(b"x" * (3 * RSS))  # written, so resident: past the limit
        return PlainTextResponse("held")

    @api.post("/_test/free")
    def free() -> PlainTextResponse:
        held.clear()
        return PlainTextResponse("freed")

    @api.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("echo " + await websocket.receive_text())
        await websocket.close()

    api.add_middleware(
        GuardMiddleware,
        retry_after=7,
        exempt=("/_test",),
        status_path="/status",
        metrics_path="/metrics",
        detail=True,
    )
    app = api
    """
)

SERVERS = {
    "uvicorn-h11": ["uvicorn", "app:app", "--http", "h11", "--ws", "wsproto"],
    "uvicorn-httptools": ["uvicorn", "app:app", "--http", "httptools", "--ws", "websockets-sansio"],
    # What uvicorn[standard] ran before 0.35 (deprecated since): its own websocket handshake.
    "uvicorn-websockets-legacy": [
        "uvicorn",
        "app:app",
        "--http",
        "httptools",
        "--ws",
        "websockets",
    ],
    "hypercorn": ["hypercorn", "app:app"],
}
"""Each server as started from the command line, without its address."""

_WAIT = 30.0
_PROXIED = {"X-Forwarded-For": "203.0.113.9"}


@dataclass
class Server:
    """One ASGI server serving APP, its combined output in ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    prefix: str = ""
    """What a client puts before the app's paths (the root path, where the server keeps it)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def output(self, since: int = 0) -> str:
        return self.log.read_bytes()[since:].decode(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(20)


def _start(name: str, directory: Path, root_path: str = "") -> Server:
    (directory / "app.py").write_text(APP)
    port = servers.free_port()
    command = [sys.executable, "-m", *SERVERS[name]]
    if name == "hypercorn":
        command += ["--bind", f"127.0.0.1:{port}"]
    else:
        command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "on"]
    if root_path:
        command += ["--root-path", root_path]
    # uvicorn serves behind a proxy that strips the root path (it puts it back in the scope's
    # path); hypercorn behind one that keeps it: either way the scope's path starts with it.
    prefix = root_path if name == "hypercorn" else ""
    log = directory / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(name, proc, port, log, prefix)
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited at start:\n{server.output()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + "/hello", timeout=2).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"{name} did not answer within {_WAIT:.0f}s:\n{server.output()}")


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A fresh server of each kind per test, checked after it to have logged no traceback.

    Fresh, because a feature shed again soon after its restore is held shed longer each
    time (anti-flapping): one pressure cycle per server keeps every test's timing its own.
    """
    started = _start(request.param, tmp_path)
    try:
        yield started
    finally:
        started.stop()
    _assert_quiet(started)


def _assert_quiet(server: Server) -> None:
    """The server logged no traceback and no error."""
    output = server.output()
    assert "Traceback" not in output and "ERROR" not in output, output


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    """A keep-alive client: one malformed response would break every later one on it."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def _health(http: httpx.Client) -> httpx.Response:
    response = http.get("/health", headers=_PROXIED)
    _assert_framed(response, "application/json")
    return response


def _wait_status(http: httpx.Client, status: str) -> None:
    deadline = time.monotonic() + _WAIT
    while (health := _health(http).json())["status"] != status:
        assert time.monotonic() < deadline, f"health never said {status!r}: {health}"
        time.sleep(0.05)


@contextlib.contextmanager
def _critical(http: httpx.Client) -> Iterator[None]:
    """Real memory held past the critical threshold, released (and back to ok) on exit."""
    assert http.post("/_test/allocate").text == "held"
    try:
        _wait_status(http, "critical")
        yield
    finally:
        assert http.post("/_test/free").text == "freed"
        _wait_status(http, "ok")


def _assert_framed(response: httpx.Response, content_type: str) -> None:
    """A complete HTTP/1.1 response: its own content type and a length that matches its body."""
    assert response.headers["content-type"].startswith(content_type)
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["cache-control"] == "no-store"


def test_requests_pass_and_health_answers_while_not_shed(http: httpx.Client) -> None:
    """Without pressure requests reach the app, and /health answers 200 with figures or detail."""
    assert http.get("/hello").text == "hello 0"
    public = _health(http)
    assert public.status_code == 200
    assert public.json()["status"] == "ok"
    assert "sources" not in public.json()
    detail = http.get("/health")  # a loopback client that no proxy relayed sees the detail
    _assert_framed(detail, "application/json")
    assert detail.status_code == 200
    assert "sources" in detail.json()


def test_shed_requests_get_a_well_formed_503(http: httpx.Client) -> None:
    """While critical every request gets a complete 503 with Retry-After, then the app again."""
    with _critical(http):
        for refused in (http.get("/hello"), http.post("/hello", content=b"y" * 100_000)):
            assert refused.status_code == 503
            _assert_framed(refused, "application/json")
            assert refused.json() == {"error": "overloaded", "retry_after": 7}
            assert refused.headers["retry-after"] == "7"
            assert refused.headers["x-runtime-guard-pressure"] == "critical"
        health = http.get("/health")
        _assert_framed(health, "application/json")
        assert (health.status_code, health.json()["status"]) == (503, "critical")
        assert "sources" in health.json()
        public = _health(http)
        assert public.status_code == 503
        assert "sources" not in public.json()
    assert http.get("/hello").text == "hello 0"
    assert http.post("/hello", content=b"y" * 10).text == "hello 10"


def test_metrics_route_answers_in_the_format_asked(http: httpx.Client) -> None:
    """The metrics route answers Prometheus text, or OpenMetrics when the scraper asks for it."""
    text = http.get("/metrics")
    assert text.status_code == 200
    _assert_framed(text, "text/plain")
    assert b"runtime_guard_" in text.content
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    with _critical(http):
        open_metrics = http.get("/metrics", headers=accept)
    assert open_metrics.status_code == 200
    _assert_framed(open_metrics, "application/openmetrics-text")
    assert open_metrics.content.endswith(b"# EOF\n")


def test_status_page_for_loopback_and_403_through_a_proxy(http: httpx.Client) -> None:
    """The status page renders for a loopback client and is a complete 403 for a proxied one."""
    page = http.get("/status")
    assert page.status_code == 200
    _assert_framed(page, "text/html")
    assert b"<html" in page.content.lower()
    with _critical(http):
        forbidden = http.get("/status", headers=_PROXIED)
        assert forbidden.status_code == 403
        _assert_framed(forbidden, "text/plain")
        assert forbidden.content.startswith(b"forbidden")
        assert http.get("/status").status_code == 200


def test_websocket_closed_with_1013_while_shed_and_accepted_otherwise(
    server: Server, http: httpx.Client
) -> None:
    """A websocket opened while ``websockets`` is shed is closed with 1013; otherwise it echoes."""
    url = f"ws://127.0.0.1:{server.port}/ws"
    with connect(url, open_timeout=10, close_timeout=5) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "echo hi"
    with _critical(http):
        for subprotocols in (None, [Subprotocol("chat")]):
            with (
                connect(url, subprotocols=subprotocols, open_timeout=10) as ws,
                pytest.raises(ConnectionClosed) as closed,
            ):
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013
    with connect(url, open_timeout=10, close_timeout=5) as ws:
        ws.send("again")
        assert ws.recv(timeout=10) == "echo again"


def _wrk(url: str, seconds: int = 3) -> tuple[int, int, int]:
    """Load ``url`` from another process: (requests answered, non-2xx answers, socket errors)."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (Debian package wrk)")
    command = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--timeout", "10s", url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    answered = re.search(r"(\d+) requests in", out.stdout)
    assert answered is not None, out.stdout
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out.stdout
    )
    return (
        int(answered.group(1)),
        int(refused.group(1)) if refused else 0,
        sum(int(n) for n in errors.groups()) if errors else 0,
    )


@pytest.mark.slow
def test_under_load_every_request_is_answered_503_while_shed_then_200(
    server: Server, http: httpx.Client
) -> None:
    """Under load from another process no connection fails: all 503 while critical, then 200."""
    with _critical(http):
        answered, refused, errors = _wrk(server.url + "/hello")
    assert answered > 0 and (refused, errors) == (answered, 0), (answered, refused, errors)
    answered, refused, errors = _wrk(server.url + "/hello")
    assert answered > 0 and (refused, errors) == (0, 0), (answered, refused, errors)


@pytest.mark.parametrize("name", ["uvicorn-h11", "hypercorn"])
def test_routes_and_exemptions_hold_under_a_root_path(name: str, tmp_path: Path) -> None:
    """Under a root path the guard still answers /health, exempts /_test and sheds /hello."""
    server = _start(name, tmp_path, root_path="/api")
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            health = _health(http)
            assert health.json()["pressure"] == "ok"
            with _critical(http):  # allocating and freeing are exempt: they still reach the app
                refused = http.get("/hello")
                assert refused.status_code == 503
                _assert_framed(refused, "application/json")
    finally:
        server.stop()
    _assert_quiet(server)
