"""What every app here shares: the ordinary routes beside the one under study, and the guard.

An app module builds its Flask ``app`` and its FastAPI ``api`` as a user would, registers
:data:`pages` / :data:`pages_router` (a home page, an item page and a search, each making
only temporaries) and puts the guard in with :func:`guard_flask` / :func:`guard_fastapi`.
``LEAKAPP_GUARD=0`` leaves the guard out entirely (the baseline of latency comparisons);
``LEAKAPP_BYTES`` is how much one request to the route under study keeps (default 8 KiB).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from flask import Blueprint, Flask, jsonify

GUARDED = os.environ.get("LEAKAPP_GUARD", "1") != "0"
PER_REQUEST = int(os.environ.get("LEAKAPP_BYTES", str(8 * 1024)))

_CATALOGUE = [{"id": i, "name": f"item {i}", "price": i * 1.5} for i in range(200)]


def page(n: int) -> dict[str, Any]:
    """A page of the catalogue: a few hundred temporary objects, all freed after the request."""
    rows = [dict(item, rank=k) for k, item in enumerate(_CATALOGUE[n % 50 : n % 50 + 40])]
    text = json.dumps(rows)
    return {"n": n, "count": len(rows), "digest": hash(text) & 0xFFFF}


def search(q: str) -> dict[str, Any]:
    words = [f"{q}-{i}" for i in range(300)]
    hits = sorted(w for w in words if w.endswith(str(len(q))))
    return {"q": q, "hits": len(hits)}


pages = Blueprint("pages", __name__)


@pages.get("/")
def home() -> Any:
    return jsonify(page(random.randrange(1000)))


@pages.get("/items/<int:item_id>")
def item(item_id: int) -> Any:
    return jsonify(page(item_id))


@pages.get("/search")
def find() -> Any:
    from flask import request

    return jsonify(search(request.args.get("q", "x")))


pages_router = APIRouter()


@pages_router.get("/")
def api_home() -> dict[str, Any]:
    return page(random.randrange(1000))


@pages_router.get("/items/{item_id}")
def api_item(item_id: int) -> dict[str, Any]:
    return page(item_id)


@pages_router.get("/search")
def api_find(q: str = "x") -> dict[str, Any]:
    return search(q)


def truth(held: Callable[[], Any]) -> dict[str, Any]:
    """What the holder really keeps now: its length and pympler's full deep size.

    The harness reads it after load stops, to judge the report's retained size; not a route
    an app would have.
    """
    import types

    from pympler import asizeof

    holder = held()
    # pympler sizes a function as code, without what its closure keeps; a closure's data
    # is what a registry of callbacks retains.
    kept = [
        [cell.cell_contents for cell in item.__closure__ or ()]
        if isinstance(item, types.FunctionType)
        else item
        for item in holder
    ]
    extra = asizeof.asizeof(kept) - asizeof.asizeof(list(holder))
    return {"entries": len(holder), "bytes": asizeof.asizeof(holder) + max(extra, 0)}


def guard_flask(app: Flask, held: Callable[[], Any]) -> None:
    """The guard's middleware around ``app`` (the gunicorn hooks install the guard)."""
    app.add_url_rule("/_truth", "truth", lambda: jsonify(truth(held)))
    if GUARDED:
        from runtime_guard.integrations.flask import init_app

        init_app(
            app,
            install=False,
            status_token=os.environ.get("LEAKAPP_TOKEN") or None,
            diagnose_path="/_guard/diagnose",
        )


def fastapi_app(held: Callable[[], Any]) -> FastAPI:
    """A FastAPI app whose lifespan installs the guard in each worker, with its middleware."""
    if GUARDED:
        from runtime_guard.integrations.asgi import GuardMiddleware, lifespan

        api = FastAPI(lifespan=lifespan())
        api.add_middleware(
            GuardMiddleware,
            status_token=os.environ.get("LEAKAPP_TOKEN") or None,
            diagnose_path="/_guard/diagnose",
        )
    else:
        api = FastAPI()
    api.add_api_route("/_truth", lambda: truth(held))
    api.include_router(pages_router)
    return api
