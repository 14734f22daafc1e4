"""Which route or task the growth comes with: counts per request, a regression per report.

The middleware (WSGI, ASGI, Django) and the Celery integration call :meth:`RouteCounts.path`
or :meth:`RouteCounts.named` once per request or task: one dict update, about 0.2 µs.
Nothing else runs on the request path. In particular the heap is not measured around each
request: ``sys.getallocatedblocks()`` walks every pool of every arena, 0.4 µs on a fresh
interpreter but 120 µs on a 170 MB heap (measured here), twice per request. While a leak
diagnosis traces (:data:`TRACING`), the middleware also reads tracemalloc's traced total
as each request ends (an O(1) call): the growth since the previous request ended goes to
this one. On a sync worker that is exactly what the request kept; where requests overlap,
each allocation still counts once, for the request that ends next, so the leaking route's
own requests collect most of its growth (measuring from each request's start instead
counted every overlapping neighbour's allocations in every request's figure: under uvicorn
the clean routes came out as large as the leaking one).

Raw request paths are turned into route names on the sampler thread, once per sample and
once per distinct path: a resolver the middleware registered (a Flask app's URL map) names
the route template, else segments holding a digit become ``{}``. The leak detector keeps
the cumulative counts beside each sample, and :func:`rank` explains the growth of the
process by the routes: a non-negative least-squares fit of the growth in each stretch of
time on the requests of each route in it, which separates a leaking route from its
neighbours however requests overlap, as long as traffic does not hold the routes' shares
fixed to the request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_ROUTES",
    "OTHER",
    "TRACING",
    "RouteCounts",
    "RouteGrowth",
    "asgi_route",
    "choose",
    "connect_celery",
    "counts",
    "django_route",
    "flask_resolver",
    "rank",
    "traced_memory",
]

MAX_ROUTES = 64
"""Distinct routes counted; requests of any further route count as :data:`OTHER`."""

OTHER = "(other routes)"

TRACING = False
"""True while a leak diagnosis traces: the middleware then also reads tracemalloc's total
as each request ends. Set by the leak detector only."""

EPOCH = 0
"""Bumped by the leak detector when its window closes: the growth from a request's end in
an earlier epoch to one in this epoch spans the diagnosis's own work (the snapshot, the
holder search), whose allocations are no request's, and is not recorded."""

MAX_TRACED = 256
"""Traced deltas kept per route in a window."""

# Raw paths awaiting a name, and named paths remembered: both bounded, the guard's own
# memory must not grow with the number of distinct URLs a server sees. The names are a
# small cache emptied when full: paths with ids never repeat, and naming one again costs
# microseconds on the sampler thread, while remembering thousands of them would be the
# guard's own slow growth on the heap it judges.
_MAX_PENDING = 4096
_MAX_NAMES = 256


def traced_memory() -> int:
    """tracemalloc's traced total now (bytes), without importing tracemalloc."""
    import _tracemalloc

    return int(_tracemalloc.get_traced_memory()[0])


Resolver = Callable[[str], "str | None"]


class RouteCounts:
    """Requests per route since this process started, and traced bytes per route while a
    diagnosis traces. One per process (:func:`counts`)."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        """Route -> requests, up to the last :meth:`fold`."""
        self.traced: dict[str, list[int]] = {}
        """Route -> the traced bytes each request left allocated, since :meth:`start_tracing`
        (:data:`MAX_TRACED` at most)."""
        self._paths: dict[str, int] = {}
        self._named: dict[str, int] = {}
        self._traced_paths: dict[str, list[int]] = {}
        self._names: dict[str, str] = {}
        self._resolvers: list[Resolver] = []
        self._lock = threading.Lock()
        self._last: tuple[int, int] | None = None

    # -- the request path: one dict update ---------------------------------------------

    def path(self, path: str) -> None:
        """Count a request to the raw ``path`` (named later, off the request path)."""
        paths = self._paths
        n = paths.get(path)
        if n is not None:
            paths[path] = n + 1
        elif len(paths) < _MAX_PENDING:
            paths[path] = 1

    def named(self, route: str) -> None:
        """Count a request to (or a task of) the route or task called ``route``."""
        named = self._named
        named[route] = named.get(route, 0) + 1

    def _step(self) -> int | None:
        """tracemalloc's growth since the request or task that ended last (None across a
        change of :data:`EPOCH`, or for the first one)."""
        total, epoch = traced_memory(), EPOCH
        last, self._last = self._last, (total, epoch)
        if last is None or last[1] != epoch:
            return None
        return total - last[0]

    def traced_path(self, path: str) -> None:
        """Count a request to the raw ``path`` that just ended, with the traced growth since
        the previous request ended: every allocation counts once, for the request whose end
        follows it, however requests overlap."""
        self.path(path)
        _keep_delta(self._traced_paths, path, self._step(), _MAX_PENDING)

    def traced_named(self, route: str) -> None:
        """As :meth:`traced_path`, for a named route or task."""
        self.named(route)
        _keep_delta(self.traced, route, self._step(), MAX_ROUTES)

    # -- the sampler thread ------------------------------------------------------------

    def add_resolver(self, resolver: Resolver) -> None:
        """Name raw paths with ``resolver`` (``path -> route template or None``)."""
        with self._lock:
            if resolver not in self._resolvers:
                self._resolvers.append(resolver)
                self._names.clear()

    def fold(self) -> None:
        """Name the paths counted since the last fold and add them to :attr:`totals`."""
        with self._lock:
            paths, self._paths = self._paths, {}
            named, self._named = self._named, {}
            traced, self._traced_paths = self._traced_paths, {}
            for path, n in paths.items():
                self._add(self._name(path), n)
            for route, n in named.items():
                self._add(route, n)
            for path, deltas in traced.items():
                route = self._name(path)
                if route not in self.totals:
                    route = OTHER
                entry = self.traced.setdefault(route, [])
                entry.extend(deltas[: MAX_TRACED - len(entry)])

    def _add(self, route: str, n: int) -> None:
        totals = self.totals
        if route not in totals and len(totals) >= MAX_ROUTES:
            route = OTHER
        totals[route] = totals.get(route, 0) + n

    def _name(self, path: str) -> str:
        name = self._names.get(path)
        if name is None:
            name = None
            for resolver in self._resolvers:
                try:
                    name = resolver(path)
                except Exception:  # a resolver that fails names nothing
                    name = None
                if name:
                    break
            name = name or _normalise(path)
            if len(self._names) >= _MAX_NAMES:
                self._names.clear()
            self._names[path] = name
        return name

    def start_tracing(self) -> None:
        """Forget the traced bytes of an earlier diagnosis."""
        with self._lock:
            self.traced = {}
            self._traced_paths = {}
            self._last = None

    def clear(self) -> None:
        """Forget everything (a forked child counts its own requests)."""
        with self._lock:
            self.totals = {}
            self.traced = {}
            self._paths = {}
            self._named = {}
            self._traced_paths = {}


def _keep_delta(deltas: dict[str, list[int]], key: str, delta: int | None, keys: int) -> None:
    """Add ``delta`` to ``key``'s list, both bounded (``keys`` keys, :data:`MAX_TRACED` each)."""
    if delta is None:
        return
    entry = deltas.get(key)
    if entry is not None:
        if len(entry) < MAX_TRACED:
            entry.append(delta)
    elif len(deltas) < keys:
        deltas[key] = [delta]


def _normalise(path: str) -> str:
    """``/reports/3f2a/pdf`` -> ``/reports/{}/pdf``: segments holding a digit are ids."""
    if not any(c.isdigit() for c in path):
        return path or "/"
    return "/".join(
        "{}" if any(c.isdigit() for c in segment) else segment for segment in path.split("/")
    )


_counts = RouteCounts()


def counts() -> RouteCounts:
    """The process's route counts."""
    return _counts


def asgi_route(scope: Any) -> str | None:
    """The route template an ASGI framework matched (Starlette and FastAPI set
    ``scope["route"]``), or None."""
    route = scope.get("route")
    path = getattr(route, "path", None) if route is not None else None
    return path if isinstance(path, str) and path else None


def django_route(request: Any) -> str | None:
    """The URL pattern Django resolved for ``request`` (``"/reports/<str:id>"``), or None."""
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None) if match is not None else None
    if not isinstance(route, str):
        return None
    return route if route.startswith("/") else "/" + route


def connect_celery(celery_signals: Any) -> None:
    """Count each Celery task by name as it ends (``task_postrun``), and while a diagnosis
    traces, what it left allocated. Idempotent: connected once under one ``dispatch_uid``,
    and again after anything disconnected it (a flag would say connected when it no
    longer is)."""
    celery_signals.task_postrun.connect(
        _celery_postrun, weak=False, dispatch_uid="runtime_guard.leaks.routes"
    )


def _celery_postrun(sender: Any = None, **_: Any) -> None:
    name = str(getattr(sender, "name", None) or "celery task")
    if TRACING:
        _counts.traced_named(name)
    else:
        _counts.named(name)


def flask_resolver(app: Any) -> Resolver | None:
    """A resolver naming raw paths by the rules of a Flask (werkzeug) app, or None."""
    url_map = getattr(app, "url_map", None)
    bind = getattr(url_map, "bind", None)
    if bind is None:
        return None
    adapter = bind("localhost")

    def resolve(path: str) -> str | None:
        try:
            rule, _ = adapter.match(path, return_rule=True)
        except Exception:  # not found, another method, a redirect: no rule
            return None
        name = getattr(rule, "rule", None)
        return name if isinstance(name, str) else None

    return resolve


# -- the ranking -------------------------------------------------------------------------


@dataclass
class RouteGrowth:
    """How much of the growth one route explains."""

    route: str
    """The route template, the normalised path, or the task name."""
    requests: int
    """Requests (or tasks) in the stretch of time the estimate covers."""
    bytes_per_request: float
    """Estimated bytes each request leaves allocated."""
    share: float
    """Fraction of the explained growth this route accounts for."""
    method: str
    """``"traced"`` (tracemalloc around each request) or ``"regression"`` (growth on
    request counts)."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "route": self.route,
            "requests": self.requests,
            "bytes_per_request": round(self.bytes_per_request, 1),
            "share": round(self.share, 4),
            "method": self.method,
        }

    def __str__(self) -> str:
        from runtime_guard._units import format_size

        return (
            f"{self.route}: {format_size(max(self.bytes_per_request, 0))} per request over "
            f"{self.requests:,} requests ({self.share:.0%} of the growth, {self.method})"
        )


Point = tuple[float, float, tuple[int, ...]]
"""``(time, growing figure, cumulative requests per route)`` as the detector records them."""


def rank(
    points: Sequence[Point],
    names: Sequence[str],
    traced: dict[str, list[int]] | None = None,
    *,
    min_requests: int = 5,
    limit: int = 5,
) -> list[RouteGrowth]:
    """Routes ranked by the bytes each request leaves behind, biggest first.

    With ``traced`` (``route -> each request's traced bytes`` from a diagnosis window) the
    figures are tracemalloc's own, a trimmed mean per route: a request that happened to run
    while a cache refilled, or beside a neighbour's burst, does not decide the ranking.
    Otherwise they come from :func:`fit` on ``points``.
    """
    if traced:
        # A window that closed early on a fast leak holds a few requests of each route; a
        # route with fewer than ``min_requests`` still counts when its requests alone kept
        # most of what the window saw (two at least: one request is not a rate).
        kept = sum(max(sum(deltas), 0) for deltas in traced.values())
        rows = [
            (route, len(deltas), _trimmed_mean(deltas))
            for route, deltas in traced.items()
            if route != OTHER
            and (
                len(deltas) >= min_requests
                or (len(deltas) >= 2 and kept > 0 and sum(deltas) * 2 >= kept)
            )
        ]
        method = "traced"
    else:
        rows = _regression(points, names, min_requests)
        method = "regression"
    growth = sum(max(per, 0.0) * n for _, n, per in rows)
    ranked = sorted(rows, key=lambda row: -row[2])[:limit]
    return [
        RouteGrowth(route, n, per, max(per, 0.0) * n / growth if growth > 0 else 0.0, method)
        for route, n, per in ranked
    ]


def choose(
    traced: Sequence[RouteGrowth],
    regressed: Sequence[RouteGrowth],
    *,
    least_requests: int = 200,
    clear_lead: float = 2.0,
) -> list[RouteGrowth]:
    """The ranking a report shows, from a diagnosis window's traced figures and the
    regression over the minutes before it.

    tracemalloc's figures are exact where requests do not overlap, but a window holds a
    few tens of requests a route; the regression has minutes of them, yet under steady
    traffic every route's counts rise together and it can hand one route's growth to
    another (measured: a clean route ranked first at 6.1 KiB a request under gunicorn
    gthread, at 5.8 KiB under uvicorn, the leaking one second at 4.1 and 3.3 KiB). So
    the traced ranking stands where the two agree, where the regression has fewer than
    ``least_requests`` for its leader, or where either leader is not clear; the regression
    wins only with a clear leader (``clear_lead`` times what the next route keeps a
    request) against a traced ranking without one.
    """
    if not traced:
        return list(regressed)
    if not regressed:
        return list(traced)
    if (
        regressed[0].route != traced[0].route
        and regressed[0].requests >= least_requests
        and _clear(regressed, clear_lead)
        and not _clear(traced, clear_lead)
    ):
        return list(regressed)
    return list(traced)


def _clear(ranked: Sequence[RouteGrowth], lead: float) -> bool:
    """Whether the first route keeps ``lead`` times what the second keeps a request."""
    first = ranked[0].bytes_per_request
    second = ranked[1].bytes_per_request if len(ranked) > 1 else 0.0
    return first > 0 and first >= lead * max(second, 0.0)


def _trimmed_mean(values: Sequence[int], cut: float = 0.2) -> float:
    """The mean of ``values`` without the lowest and highest ``cut`` of them."""
    ordered = sorted(values)
    drop = int(len(ordered) * cut)
    kept = ordered[drop : len(ordered) - drop] or ordered
    return sum(kept) / len(kept)


def _regression(
    points: Sequence[Point], names: Sequence[str], min_requests: int
) -> list[tuple[str, int, float]]:
    if len(points) < 4 or not names:
        return []
    width = len(names)
    rows: list[tuple[float, list[float]]] = []
    # Stretches of about five samples: long enough for each to hold requests of most
    # routes, short enough to leave tens of them for the fit.
    step = max(1, len(points) // 60)
    step = max(step, 5) if len(points) >= 20 else 1
    for a, b in zip(points[::step], points[step::step], strict=False):
        before = a[2] + (0,) * (width - len(a[2]))
        after = b[2] + (0,) * (width - len(b[2]))
        rows.append((b[1] - a[1], [float(y - x) for x, y in zip(before, after, strict=True)]))
    totals = [int(sum(row[1][k] for row in rows)) for k in range(width)]
    keep = [k for k in range(width) if totals[k] >= min_requests and names[k] != OTHER]
    if not keep or len(rows) < 2:
        return []
    beta = fit([(y, [x[k] for k in keep]) for y, x in rows])
    return [(names[k], totals[k], beta[i]) for i, k in enumerate(keep)]


def fit(rows: Sequence[tuple[float, Sequence[float]]], sweeps: int = 300) -> list[float]:
    """Non-negative least squares ``y ≈ Σ β_k x_k`` by coordinate descent on the normal
    equations (a handful of routes: the Gram matrix is small, numpy is not needed).

    A route's coefficient is the growth per request it explains; clamping at zero keeps a
    route whose requests happen to coincide with collections from soaking up the rest.
    """
    width = len(rows[0][1]) if rows else 0
    gram = [[0.0] * width for _ in range(width)]
    xty = [0.0] * width
    for y, x in rows:
        for i in range(width):
            xi = x[i]
            if not xi:
                continue
            xty[i] += xi * y
            row = gram[i]
            for j in range(width):
                row[j] += xi * x[j]
    beta = [0.0] * width
    for _ in range(sweeps):
        moved = 0.0
        for i in range(width):
            if gram[i][i] <= 0:
                continue
            rest = sum(gram[i][j] * beta[j] for j in range(width) if j != i)
            new = max(0.0, (xty[i] - rest) / gram[i][i])
            moved = max(moved, abs(new - beta[i]))
            beta[i] = new
        if moved < 1e-9:
            break
    return beta
