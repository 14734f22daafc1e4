"""Web apps that leak the way real ones do, and clean ones that only look as if they might.

Each module is a small app written as its author would: a Flask ``app`` (served by
gunicorn, sync or gthread) and a FastAPI ``api`` (served by uvicorn), with the same ordinary
routes (:mod:`leakapps.common`) beside one route under study. In a leaking app that route
keeps memory through the line marked ``# leak``; :data:`SHAPES` says, for each, what a
correct leak report names: that line, the holder and the route. :data:`CLEAN` apps grow
while they warm up, in a sawtooth, or up to a bound, and must never be reported.

:mod:`leakapps.harness` runs them under real servers with load from another process;
``tests/test_leak_apps.py`` and ``benchmarks/bench_leaks.py`` both use it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ALL", "CLEAN", "HERE", "SHAPES", "AppSpec", "leak_line"]

HERE = os.path.dirname(os.path.abspath(__file__))


def _word(rng: random.Random) -> str:
    return f"{rng.getrandbits(48):012x}"


@dataclass(frozen=True)
class AppSpec:
    """One app: where it is, how its route under study is called, what a report must say."""

    name: str
    """Module name in this package."""
    route: str
    """The route under study as FastAPI writes it (Flask's ``<x>`` is ``{x}`` here)."""
    path: Callable[[random.Random], str]
    """A request path for that route (a fresh id each time, as real traffic has)."""
    holder: str = ""
    """What the report's holder path must end with (leaking apps)."""
    flask: str = "app"
    """The Flask app's name in the module (``create_app()`` for a factory)."""
    asgi: str = "api"
    """The FastAPI app's name (``create_api()`` for a factory)."""

    @property
    def leaks(self) -> bool:
        return bool(self.holder)

    @property
    def module(self) -> str:
        return f"leakapps.{self.name}"

    @property
    def file(self) -> str:
        return os.path.join(HERE, f"{self.name}.py")


def leak_line(spec: AppSpec) -> int:
    """The line number of ``spec``'s line marked ``# leak``."""
    with open(spec.file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.rstrip().endswith("# leak"):
                return number
    raise LookupError(f"{spec.file} has no line marked '# leak'")


SHAPES: tuple[AppSpec, ...] = (
    AppSpec(
        "bytes_cache",
        "/reports/{report_id}",
        lambda r: f"/reports/{_word(r)}",
        "leakapps.bytes_cache._RENDERED",
    ),
    AppSpec(
        "bytearray_uploads",
        "/uploads/{upload_id}",
        lambda r: f"/uploads/{_word(r)}",
        "leakapps.bytearray_uploads.uploads",
    ),
    AppSpec(
        "audit_log",
        "/orders/{order_id}/pay",
        lambda r: f"/orders/{_word(r)}/pay",
        "leakapps.audit_log.AUDIT_LOG",
    ),
    AppSpec(
        "sessions_kept",
        "/partners/{partner}/quote",
        lambda r: f"/partners/{_word(r)}/quote",
        "leakapps.sessions_kept._open_sessions",
    ),
    AppSpec(
        "listeners",
        "/orders/{order_id}/watch",
        lambda r: f"/orders/{_word(r)}/watch",
        "leakapps.listeners._listeners['order.shipped']",
    ),
    AppSpec(
        "numpy_history",
        "/users/{user}/score",
        lambda r: f"/users/{_word(r)}/score",
        "leakapps.numpy_history._history",
    ),
    AppSpec(
        "token_set",
        "/login/{token}",
        lambda r: f"/login/{_word(r)}",
        "leakapps.token_set.SEEN_TOKENS",
    ),
    AppSpec(
        "class_history",
        "/api/{client}/ping",
        lambda r: f"/api/{_word(r)}/ping",
        "leakapps.class_history.RateLimiter.hits",
    ),
    AppSpec(
        "blueprint_cache",
        "/catalog/find",
        lambda r: f"/catalog/find?q={_word(r)}",
        "leakapps.blueprint_cache.cache._results",
    ),
    AppSpec(
        "app_state",
        "/events/{event_id}",
        lambda r: f"/events/{_word(r)}",
        "['recent_events']",
        flask="create_app()",
        asgi="create_api()",
    ),
)
"""The leaking apps: one shape of leak each."""

CLEAN: tuple[AppSpec, ...] = (
    AppSpec("warm_cache", "/products/{product_id}", lambda r: f"/products/{r.randrange(10**6)}"),
    AppSpec("sawtooth", "/track/{event_id}", lambda r: f"/track/{_word(r)}"),
    AppSpec("bounded_lru", "/geo/{address}", lambda r: f"/geo/{_word(r)}"),
)
"""Apps that hold memory on purpose, bounded: never a leak."""

ALL: dict[str, AppSpec] = {spec.name: spec for spec in SHAPES + CLEAN}
