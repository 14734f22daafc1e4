"""The probe routes: /livez (the guard can run), /readyz (the container takes requests),
/health (this worker, for load balancers), /health?detail=1 (the whole container)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_container  # tests/: a guarded worker process of a test's own container

from runtime_guard import signals
from runtime_guard._component import Component
from runtime_guard.config import ConfigError
from runtime_guard.guard import Guard
from runtime_guard.integrations import _http
from runtime_guard.integrations._health import WEDGED_AFTER, readiness, takes_traffic
from runtime_guard.integrations._recycle import attach_recycler
from runtime_guard.integrations.asgi import GuardMiddleware as AsgiMiddleware
from runtime_guard.integrations.wsgi import GuardMiddleware
from runtime_guard.pressure import Pressure
from runtime_guard.testing import FakeProbe, ManualClock, make_guard

# Each test's container is its own directory (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("container_dir")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]


def get(
    middleware: Any, path: str, query: str = "", remote: str = "127.0.0.1", **headers: str
) -> tuple[int, Any]:
    """One request through a WSGI middleware: ``(status code, JSON body or text)``."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": remote,
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper()] = value
    status: list[str] = []
    body = b"".join(middleware(environ, lambda s, h: status.append(s)))
    code = int(status[0].split()[0])
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body.decode()


@pytest.fixture
def running() -> Iterator[tuple[Guard, FakeProbe, ManualClock]]:
    """A guard whose sampler thread runs (every 20 ms) on a fake probe and a hand clock."""
    probe, clock = FakeProbe(), ManualClock()
    guard = make_guard(probe, clock, interval=0.02, relief=False, restart_after="off")
    guard.start()
    yield guard, probe, clock
    guard.stop()


def _rounds(guard: Guard, count: int = 2) -> None:
    """Wait until the sampler has ended ``count`` more rounds."""
    done = threading.Semaphore(0)

    def receiver(sender: Any, **_: Any) -> None:
        done.release()

    signals.sample_taken.connect(receiver, sender=guard)
    try:
        for _ in range(count):
            assert done.acquire(timeout=10)
    finally:
        signals.sample_taken.disconnect(receiver)


class Blocking(Component):
    """A component that wedges the sampler (or health()) while ``hold`` is set."""

    name = "blocking"

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.release = threading.Event()
        self.blocked = threading.Event()
        self.in_health = False

    def on_sample(self, guard: Guard, sample: Any) -> None:
        if self.hold.is_set() and not self.in_health:
            self.blocked.set()
            self.release.wait(30)

    def health(self, guard: Guard) -> dict[str, Any]:
        if self.hold.is_set() and self.in_health:
            self.blocked.set()
            self.release.wait(30)
        return {}


# -- /livez ----------------------------------------------------------------------------


def test_livez_stays_200_at_critical_while_health_and_readyz_refuse(
    running: tuple[Guard, FakeProbe, ManualClock],
) -> None:
    """At CRITICAL /health and /readyz answer 503 (one worker, refusing), /livez 200: memory
    pressure never gets the container restarted."""
    guard, probe, _ = running
    middleware = GuardMiddleware(app, guard=guard)
    probe.set_fraction(0.99)
    _rounds(guard)
    assert guard.pressure == Pressure.CRITICAL
    code, body = get(middleware, "/livez")
    assert (code, body["status"], body["sampler"]) == (200, "ok", "running")
    assert get(middleware, "/health")[0] == 503
    code, body = get(middleware, "/readyz")
    assert (code, body["ready"]) == (503, False)
    assert "critical pressure (99% of the limit)" in body["reason"]
    assert get(middleware, "/work")[0] == 503


def test_livez_fails_while_the_sampler_is_wedged_and_recovers(
    running: tuple[Guard, FakeProbe, ManualClock],
) -> None:
    """A sampler stuck in a round for longer than WEDGED_AFTER makes /livez 503; the next
    round it ends makes it 200 again."""
    guard, _, clock = running
    middleware = GuardMiddleware(app, guard=guard)
    blocking = Blocking()
    guard.add_component(blocking)
    blocking.hold.set()
    assert blocking.blocked.wait(10)
    clock.now += WEDGED_AFTER / 2
    assert get(middleware, "/livez")[0] == 200
    clock.now += WEDGED_AFTER
    code, body = get(middleware, "/livez")
    assert (code, body["status"]) == (503, "wedged")
    blocking.hold.clear()
    blocking.release.set()
    _rounds(guard)
    assert get(middleware, "/livez")[0] == 200


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_livez_fails_when_the_sampler_thread_died(
    running: tuple[Guard, FakeProbe, ManualClock],
) -> None:
    """A sampler thread ended by something the guard cannot catch makes /livez 503."""
    guard, _, _ = running

    class Exiting(Component):
        name = "exiting"

        def on_sample(self, guard: Guard, sample: Any) -> None:
            raise SystemExit

    guard.add_component(Exiting())
    thread = guard._thread
    assert thread is not None
    thread.join(10)
    code, body = get(GuardMiddleware(app, guard=guard), "/livez")
    assert (code, body["status"]) == (503, "dead")


def test_livez_never_waits_for_a_stuck_guard() -> None:
    """/livez answers while Guard.health() is stuck: it reads two attributes, no lock."""
    guard = make_guard(FakeProbe())
    blocking = Blocking()
    blocking.in_health = True
    guard.add_component(blocking)
    blocking.hold.set()
    stuck = threading.Thread(target=guard.health, daemon=True)
    stuck.start()
    try:
        assert blocking.blocked.wait(10)
        answered: list[int] = []
        probe = threading.Thread(
            target=lambda: answered.append(get(GuardMiddleware(app, guard=guard), "/livez")[0])
        )
        probe.start()
        probe.join(10)
        assert answered == [200]
    finally:
        blocking.release.set()
        stuck.join(10)
        guard.stop()


def test_livez_without_a_guard_or_a_sampler_is_200() -> None:
    """No guard installed, or a guard whose sampler never started: nothing to restart for."""
    assert get(GuardMiddleware(app), "/livez") == (200, {"status": "ok", "guard": "not installed"})
    guard = make_guard(FakeProbe())
    try:
        code, body = get(GuardMiddleware(app, guard=guard), "/livez")
        assert (code, body["sampler"]) == (200, "stopped")
    finally:
        guard.stop()


# -- /readyz ---------------------------------------------------------------------------


def _worker(level: str, draining: str | None = None, stale: bool = False) -> dict[str, Any]:
    return {"pid": 1, "pressure": level, "draining": draining, "stale": stale}


def test_readiness_needs_one_worker_that_takes_requests() -> None:
    """Ready while any fresh worker is neither draining nor at the refusal level."""
    guard = make_guard(FakeProbe())
    try:
        critical = Pressure.CRITICAL
        assert takes_traffic(_worker("high"), critical)
        assert not takes_traffic(_worker("high"), Pressure.HIGH)
        assert not takes_traffic(_worker("ok", draining="recycle"), critical)
        assert not takes_traffic(_worker("ok", stale=True), critical)
        one_drains = [_worker("ok", "recycle"), _worker("ok")]
        assert readiness(guard, critical, one_drains)[0] == 200
        all_drain = [_worker("ok", "recycle"), _worker("critical")]
        code, body = readiness(guard, critical, all_drain)
        assert code == 503
        assert "draining: recycle" in body["reason"]
        assert "critical pressure" in body["reason"]
        assert readiness(guard, critical, None)[0] == 200  # no view: never unready for it
        assert readiness(None, critical, [])[0] == 200
    finally:
        guard.stop()


def test_readyz_follows_shed_at() -> None:
    """At HIGH the container is ready with the default shed_at, not with shed_at="high"."""
    probe = FakeProbe()
    guard = make_guard(probe)
    try:
        probe.set_fraction(0.9)
        guard.sample()
        assert get(GuardMiddleware(app, guard=guard), "/readyz")[0] == 200
        assert get(GuardMiddleware(app, guard=guard, shed_at="high"), "/readyz")[0] == 503
    finally:
        guard.stop()


def _start_other_worker(directory: Path) -> subprocess.Popen[str]:
    """Another real worker of the same container (see ``test_container``)."""
    proc: subprocess.Popen[str] = test_container._start_worker(directory)
    return proc


def test_readyz_answers_for_the_container(container_dir: Path) -> None:
    """While this worker drains for a recycle another live worker keeps the container ready;
    once that one is gone, the draining worker makes it unready."""
    import runtime_guard

    guard = runtime_guard.install(interval=3600)
    attach_recycler(guard, lambda reason: None, "test", min_lifetime=3600, jitter=0)
    other = _start_other_worker(container_dir)
    middleware = GuardMiddleware(app)
    try:
        guard.sample()
        guard.send(signals.restart_requested, reason="asked by the test")
        guard.flush_signals()
        code, body = get(middleware, "/readyz")
        assert (code, body["ready"]) == (200, True)
        workers = {w["pid"]: w for w in body["workers"]}
        assert set(workers) == {os.getpid(), other.pid}
        assert workers[os.getpid()]["draining"] == "asked by the test"
        assert workers[os.getpid()]["takes_traffic"] is False
        assert workers[other.pid]["takes_traffic"] is True
    finally:
        other.kill()
        other.communicate(timeout=10)
    code, body = get(middleware, "/readyz")
    assert (code, body["ready"]) == (503, False)
    assert f"worker {os.getpid()} is draining: asked by the test" in body["reason"]


def test_readyz_is_ready_when_the_view_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure of the guard's own never takes the container out of service."""
    guard = make_guard(FakeProbe())

    def broken(guard: Any) -> Any:
        raise OSError("unreadable")

    monkeypatch.setattr(_http, "container_view", broken)
    try:
        code, body = get(GuardMiddleware(app, guard=guard), "/readyz")
        assert (code, body["ready"]) == (200, True)
        assert "could not read the container view" in caplog.text
    finally:
        guard.stop()


# -- /health?detail=1 and the options --------------------------------------------------


def test_health_detail_gives_the_container_only_to_who_may_see_it(container_dir: Path) -> None:
    """Loopback or the token gets the whole health and the container's workers; anyone else
    the public figures of this worker, as plain /health."""
    import runtime_guard

    guard = runtime_guard.install(interval=3600)
    guard.sample()
    middleware = GuardMiddleware(app, status_token=None)
    code, body = get(middleware, "/health", "detail=1")
    assert code == 200 and "sources" in body
    assert [w["pid"] for w in body["container"]["workers"]] == [os.getpid()]
    code, body = get(middleware, "/health", "detail=1", remote="10.1.2.3")
    assert code == 200 and "container" not in body and "sources" not in body
    assert "container" not in get(middleware, "/health")[1]
    with_token = GuardMiddleware(app, status_token="s3cret")
    code, body = get(
        with_token, "/health", "detail=1", remote="10.1.2.3", authorization="Bearer s3cret"
    )
    assert "container" in body


def test_probe_paths_are_options() -> None:
    """live_path / ready_path move or switch off the routes; a bad one fails naming it."""
    middleware = GuardMiddleware(app, live_path="/alive", ready_path=None)
    assert get(middleware, "/alive")[0] == 200
    assert get(middleware, "/readyz") == (200, "served")
    with pytest.raises(ConfigError, match="live_path"):
        GuardMiddleware(app, live_path="alive")


@pytest.mark.asyncio
async def test_asgi_middleware_answers_the_probes() -> None:
    """The ASGI middleware answers /livez and /readyz itself, with JSON."""
    guard = make_guard(FakeProbe())

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    transport = httpx.ASGITransport(app=AsgiMiddleware(asgi_app, guard=guard))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/livez")).json()["status"] == "ok"
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True
            assert (await client.get("/other")).text == "served"
    finally:
        guard.stop()
