"""Callbacks registered per request on an event registry and never removed: closures."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from flask import Flask

from leakapps import common

_listeners: defaultdict[str, list[Callable[[], None]]] = defaultdict(list)


def on(event: str, callback: Callable[[], None]) -> None:
    _listeners[event].append(callback)


def watch_order(order_id: str) -> None:
    snapshot = [f"{order_id}:{n:05d}".ljust(40) for n in range(common.PER_REQUEST // 90)]  # leak

    def notify() -> None:
        print(order_id, len(snapshot))

    on("order.shipped", notify)


app = Flask(__name__)
app.register_blueprint(common.pages)


@app.get("/orders/<order_id>/watch")
def watch(order_id: str) -> Any:
    watch_order(order_id)
    return {"watching": order_id}


common.guard_flask(app, lambda: _listeners["order.shipped"])

api = common.fastapi_app(lambda: _listeners["order.shipped"])


@api.get("/orders/{order_id}/watch")
def api_watch(order_id: str) -> dict[str, Any]:
    watch_order(order_id)
    return {"watching": order_id}
