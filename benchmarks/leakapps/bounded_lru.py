"""Clean: geocoding results in an ``lru_cache`` of 256 entries over endless addresses."""

from __future__ import annotations

import functools
from typing import Any

from flask import Flask

from leakapps import common


@functools.lru_cache(maxsize=256)
def geocode(address: str) -> bytes:
    return address.encode() * (common.PER_REQUEST // len(address))


app = Flask(__name__)
app.register_blueprint(common.pages)


@app.get("/geo/<address>")
def geo(address: str) -> Any:
    return {"size": len(geocode(address))}


common.guard_flask(app, lambda: [geocode.cache_info()] * geocode.cache_info().currsize)

api = common.fastapi_app(lambda: [geocode.cache_info()] * geocode.cache_info().currsize)


@api.get("/geo/{address}")
def api_geo(address: str) -> dict[str, Any]:
    return {"size": len(geocode(address))}
