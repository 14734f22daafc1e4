# mypy: disallow-untyped-calls=False, disallow-untyped-decorators=False
# (these tests drive third-party code that ships without types: Celery, redis-py, hypothesis)
"""Route attribution: requests counted per route by the middleware, and the ranking of routes
by what each request leaves allocated (tracemalloc's deltas, or a regression on counts)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, MutableMapping
from typing import Any

import django
import httpx
import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path as django_path
from fastapi import FastAPI
from flask import Flask

from runtime_guard.diagnosis import roots
from runtime_guard.integrations import asgi, wsgi
from runtime_guard.integrations.flask import init_app
from runtime_guard.leaks import routes
from runtime_guard.leaks.routes import OTHER, RouteCounts, fit, rank


@pytest.fixture(autouse=True)
def _fresh_counts() -> Iterator[RouteCounts]:
    counts = routes.counts()
    counts.clear()
    yield counts
    counts.clear()
    routes.TRACING = False


def _flask_app() -> Flask:
    app = Flask(__name__)

    @app.get("/reports/<report_id>")
    def report(report_id: str) -> str:
        return report_id

    @app.get("/")
    def home() -> str:
        return "home"

    return app


def test_wsgi_middleware_counts_requests_by_the_flask_rule() -> None:
    """Flask requests count under their URL rule, ids and all, named off the request path."""
    app = _flask_app()
    init_app(app, install=False)
    client = app.test_client()
    for report_id in ("a1", "b2", "c3"):
        assert client.get(f"/reports/{report_id}").status_code == 200
    client.get("/")
    counts = routes.counts()
    assert counts.totals == {}  # nothing named until the sampler folds
    counts.fold()
    assert counts.totals == {"/reports/<report_id>": 3, "/": 1}


def test_plain_wsgi_paths_are_normalised_and_bounded() -> None:
    """Without a framework's rule, segments with digits are ids; past MAX_ROUTES, "other"."""

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    middleware = wsgi.GuardMiddleware(inner)
    for path in ("/orders/12/pay", "/orders/9f3a/pay", "/about"):
        middleware({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda *a: None)
    counts = routes.counts()
    counts.fold()
    assert counts.totals == {"/orders/{}/pay": 2, "/about": 1}
    for n in range(routes.MAX_ROUTES + 10):
        middleware({"PATH_INFO": f"/page-{chr(97 + n % 26)}{chr(97 + n // 26)}"}, lambda *a: None)
    counts.fold()
    assert len(counts.totals) == routes.MAX_ROUTES + 1
    assert counts.totals[OTHER] >= 10


def test_asgi_middleware_counts_by_the_matched_route() -> None:
    """FastAPI requests count under the route template Starlette matched."""
    api = FastAPI()
    api.add_middleware(asgi.GuardMiddleware)

    @api.get("/users/{user}/score")
    def score(user: str) -> dict[str, str]:
        return {"user": user}

    async def serve() -> None:
        # The lifespan as a server runs it, then two requests through httpx's ASGI transport.
        messages = iter([{"type": "lifespan.startup"}])
        started = asyncio.Event()

        async def receive() -> dict[str, str]:
            message = next(messages, None)
            if message is None:
                await asyncio.Event().wait()
            return message or {}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()

        lifespan = asyncio.ensure_future(api({"type": "lifespan", "asgi": {}}, receive, send))
        await started.wait()
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for user in ("u1", "u2"):
                assert (await client.get(f"/users/{user}/score")).status_code == 200
        lifespan.cancel()

    asyncio.run(serve())
    counts = routes.counts()
    counts.fold()
    assert counts.totals == {"/users/{user}/score": 2}
    # The lifespan registered the FastAPI object itself as where holders are searched.
    assert any(obj is api for _, obj in roots.registered())


def _django_view(request: HttpRequest, event_id: str) -> HttpResponse:
    return HttpResponse(event_id)


urlpatterns = [django_path("events/<str:event_id>", _django_view)]


def test_django_middleware_counts_by_the_url_pattern() -> None:
    """Django requests count under the pattern the resolver matched."""
    if not settings.configured:
        settings.configure(ALLOWED_HOSTS=["testserver"], INSTALLED_APPS=[], DATABASES={})
        django.setup()
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["runtime_guard.integrations.django.GuardMiddleware"],
        RUNTIME_GUARD={"install": False},
        ALLOWED_HOSTS=["testserver"],
    ):
        client = Client()
        for event_id in ("e1", "e2", "e3"):
            assert client.get(f"/events/{event_id}").status_code == 200
    counts = routes.counts()
    counts.fold()
    assert counts.totals == {"/events/<str:event_id>": 3}


def test_traced_growth_goes_to_the_request_that_ends_next_within_one_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each request gets the traced growth since the previous one ended; none across the
    diagnosis's own work (a new epoch)."""
    totals = iter([1000, 6000, 6100, 50_000, 50_200])
    monkeypatch.setattr(routes, "traced_memory", lambda: next(totals))
    counts = routes.counts()
    counts.start_tracing()
    counts.traced_path("/a/1")  # the first: nothing to measure from
    counts.traced_path("/a/2")  # +5000
    counts.traced_named("/b")  # +100
    routes.EPOCH += 1
    counts.traced_path("/a/3")  # spans the diagnosis's snapshot: not recorded
    counts.traced_path("/a/4")  # +200
    counts.fold()
    assert counts.totals == {"/a/{}": 4, "/b": 1}
    assert counts.traced == {"/b": [100], "/a/{}": [5000, 200]}


def test_a_window_closed_early_on_a_fast_leak_still_ranks_its_route_first() -> None:
    """A route with only a few traced requests that kept most of the window's growth is
    ranked, first; a route with as few that kept little is not."""
    traced = {
        "/": [1200, 900, 1300, 1100, 1000],
        "/work/<int:n>": [102_400, 102_500, 102_450],
        "/health": [300, 200],
    }
    ranked = rank((), (), traced)
    assert [r.route for r in ranked] == ["/work/<int:n>", "/"]
    assert ranked[0].requests == 3 and 100_000 < ranked[0].bytes_per_request < 105_000


def test_traced_ranking_puts_the_leaking_route_first_despite_outliers() -> None:
    """Each route's trimmed mean ranks it: a clean route's one huge request does not win."""
    rng = random.Random(3)
    traced = {
        "/reports/{id}": [5600 + rng.randint(-200, 200) for _ in range(30)],
        "/": [rng.randint(-300, 300) for _ in range(40)] + [900_000],
        "/items/{}": [rng.randint(-100, 400) for _ in range(50)],
    }
    ranked = rank((), (), traced)
    assert ranked[0].route == "/reports/{id}"
    assert 5000 < ranked[0].bytes_per_request < 6200
    assert ranked[0].method == "traced"
    assert ranked[0].share > 0.8


def _overlapping_points(seed: int) -> tuple[list[routes.Point], list[str]]:
    """Cumulative counts of four routes under random traffic; the process grows by 5.6 KB
    per request of one of them, plus noise several times one request's worth: what a
    threaded or async server's figures look like."""
    rng = random.Random(seed)
    names = ["/", "/items/{}", "/reports/{id}", "/search"]
    totals = [0, 0, 0, 0]
    figure = 50_000_000.0
    points: list[routes.Point] = []
    for second in range(240):
        arrivals = [sum(rng.random() < 0.25 for _ in range(24)) for _ in names]
        totals = [t + a for t, a in zip(totals, arrivals, strict=True)]
        figure += 5600 * arrivals[2] + rng.gauss(0, 20_000)
        points.append((float(second), figure, tuple(totals)))
    return points, names


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_regression_separates_the_leaking_route_from_overlapping_traffic(seed: int) -> None:
    """Growth regressed on request counts ranks the leaking route first, near its true cost."""
    points, names = _overlapping_points(seed)
    ranked = rank(points, names)
    assert ranked[0].route == "/reports/{id}"
    assert ranked[0].method == "regression"
    assert 3000 < ranked[0].bytes_per_request < 8500


def _growth(method: str, *rows: tuple[str, int, float]) -> list[routes.RouteGrowth]:
    return [routes.RouteGrowth(route, n, per, 0.0, method) for route, n, per in rows]


def test_a_clear_traced_leader_outranks_a_regression_that_disagrees() -> None:
    """What the gthread run showed: minutes of steady traffic regress the growth onto a
    clean route, while the window's traced requests name the leaking one at twice the rest."""
    traced = _growth("traced", ("/watch", 29, 7300.0), ("/items", 15, 1400.0), ("/", 21, 900.0))
    regressed = _growth("regression", ("/items", 201, 6100.0), ("/watch", 276, 4100.0))
    assert routes.choose(traced, regressed)[0].route == "/watch"


def test_the_regression_wins_only_with_a_clear_leader_against_an_unclear_trace() -> None:
    """A traced lead of less than twice the runner-up is a window's noise: a regression
    with a clear leader and enough requests decides then. A regression without a clear
    leader (the uvicorn run: 5.8 KiB against 3.3) or with few requests leaves the traced
    ranking standing, as does a missing regression."""
    traced = _growth("traced", ("/", 20, 3000.0), ("/watch", 28, 2600.0))
    regressed = _growth("regression", ("/watch", 276, 5600.0), ("/", 236, 0.0))
    assert routes.choose(traced, regressed)[0].route == "/watch"
    close_trace = _growth("traced", ("/catalog", 30, 5000.0), ("/items", 20, 3000.0))
    unclear = _growth("regression", ("/items", 202, 5800.0), ("/catalog", 276, 3300.0))
    assert routes.choose(close_trace, unclear)[0].route == "/catalog"
    few = _growth("regression", ("/watch", 40, 5600.0), ("/", 30, 0.0))
    assert routes.choose(traced, few)[0].route == "/"
    assert routes.choose(traced, [])[0].route == "/"
    assert routes.choose([], regressed)[0].method == "regression"


def test_fit_is_non_negative_least_squares() -> None:
    """The fit recovers non-negative coefficients and clamps a negative one at zero."""
    rows = [
        (2.0 * a + 3.0 * b, [float(a), float(b), float(c)])
        for a, b, c in [(1, 0, 2), (0, 1, 1), (2, 1, 0), (1, 2, 3), (3, 1, 1), (0, 2, 2)]
    ]
    beta = fit(rows)
    assert beta[0] == pytest.approx(2.0, abs=1e-6)
    assert beta[1] == pytest.approx(3.0, abs=1e-6)
    assert beta[2] == pytest.approx(0.0, abs=1e-6)
    rows = [(-5.0 * c + 1.0 * a, [float(a), float(c)]) for a, c in [(1, 1), (2, 0), (0, 1), (3, 2)]]
    assert min(fit(rows)) >= 0.0


def test_celery_tasks_are_counted_by_name() -> None:
    """Each task run counts under its task name, and its traced delta while tracing."""
    import celery
    from celery import signals as celery_signals

    routes.connect_celery(celery_signals)
    app = celery.Celery("routes-test", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    kept: list[bytes] = []

    @app.task(name="reports.build")
    def build(n: int) -> int:
        kept.append(b"x" * n)
        return n

    import tracemalloc

    tracemalloc.start(1)
    try:
        routes.TRACING = True
        for _ in range(6):
            build.delay(50_000)
    finally:
        routes.TRACING = False
        tracemalloc.stop()
    counts = routes.counts()
    counts.fold()
    assert counts.totals == {"reports.build": 6}
    ranked = rank((), (), counts.traced)
    assert ranked[0].route == "reports.build"
    assert ranked[0].bytes_per_request >= 50_000


def test_celery_counting_is_connected_once_and_again_after_a_disconnect() -> None:
    """Connecting twice counts each task once; after its receiver was disconnected (another
    setup's teardown), connecting again counts again."""
    import celery
    from celery import signals as celery_signals

    app = celery.Celery("routes-reconnect", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True

    @app.task(name="reports.again")
    def again() -> None:
        pass

    routes.connect_celery(celery_signals)
    routes.connect_celery(celery_signals)
    again.delay()
    celery_signals.task_postrun.disconnect(dispatch_uid="runtime_guard.leaks.routes")
    again.delay()  # not counted: nothing listens
    routes.connect_celery(celery_signals)
    again.delay()
    counts = routes.counts()
    counts.fold()
    assert counts.totals == {"reports.again": 2}
