"""A search blueprint (a router under FastAPI) whose result cache is keyed by the raw query."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from flask import Blueprint, Flask, request

from leakapps import common


class ResultCache:
    """Results by query; the author meant to add expiry later."""

    def __init__(self) -> None:
        self._results: dict[str, list[str]] = {}

    def lookup(self, query: str) -> list[str]:
        found = self._results.get(query)
        if found is None:
            found = [f"{query}#{n}".ljust(60) for n in range(common.PER_REQUEST // 110)]  # leak
            self._results[query] = found
        return found


cache = ResultCache()
search = Blueprint("search", __name__, url_prefix="/catalog")


@search.get("/find")
def find() -> Any:
    return {"results": len(cache.lookup(request.args.get("q", "")))}


router = APIRouter(prefix="/catalog")


@router.get("/find")
def api_find(q: str = "") -> dict[str, Any]:
    return {"results": len(cache.lookup(q))}


app = Flask(__name__)
app.register_blueprint(common.pages)
app.register_blueprint(search)
common.guard_flask(app, lambda: cache._results)

api = common.fastapi_app(lambda: cache._results)
api.include_router(router)
