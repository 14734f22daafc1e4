"""Clean: product pages cached on first view; the catalogue is bounded, so the cache plateaus.

With 150 products and the load's share of product views, nine in ten are cached within the
first minute, the guard's default warm-up.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from leakapps import common

_pages: dict[int, bytes] = {}
PRODUCTS = 150


def product_page(product_id: int) -> bytes:
    key = product_id % PRODUCTS
    body = _pages.get(key)
    if body is None:
        body = _pages[key] = str(key).encode() * (common.PER_REQUEST // 3)
    return body


app = Flask(__name__)
app.register_blueprint(common.pages)


@app.get("/products/<int:product_id>")
def product(product_id: int) -> Any:
    return {"size": len(product_page(product_id))}


common.guard_flask(app, lambda: _pages)

api = common.fastapi_app(lambda: _pages)


@api.get("/products/{product_id}")
def api_product(product_id: int) -> dict[str, Any]:
    return {"size": len(product_page(product_id))}
