"""A rate limiter that keeps every hit in a class attribute shared by all its instances."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from flask import Flask

from leakapps import common


class RateLimiter:
    hits: ClassVar[list[tuple[str, float, str]]] = []

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def allow(self, client: str) -> bool:
        note = client * (common.PER_REQUEST // len(client))  # leak
        RateLimiter.hits.append((client, time.time(), note))
        recent = sum(1 for c, _, _ in RateLimiter.hits[-200:] if c == client)
        return recent <= self.limit


app = Flask(__name__)
app.register_blueprint(common.pages)


@app.get("/api/<client>/ping")
def ping(client: str) -> Any:
    return {"allowed": RateLimiter(100).allow(client)}


common.guard_flask(app, lambda: RateLimiter.hits)

api = common.fastapi_app(lambda: RateLimiter.hits)


@api.get("/api/{client}/ping")
def api_ping(client: str) -> dict[str, Any]:
    return {"allowed": RateLimiter(100).allow(client)}
