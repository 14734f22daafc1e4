"""Clean: events batched in memory and flushed every 150 requests: a sawtooth, no trend."""

from __future__ import annotations

from typing import Any

from flask import Flask

from leakapps import common

_batch: list[dict[str, Any]] = []
FLUSH_EVERY = 150


def track(event_id: str) -> int:
    _batch.append({"id": event_id, "body": event_id * (common.PER_REQUEST // len(event_id))})
    if len(_batch) >= FLUSH_EVERY:
        _batch.clear()  # sent to the analytics service
    return len(_batch)


app = Flask(__name__)
app.register_blueprint(common.pages)


@app.get("/track/<event_id>")
def track_route(event_id: str) -> Any:
    return {"batched": track(event_id)}


common.guard_flask(app, lambda: _batch)

api = common.fastapi_app(lambda: _batch)


@api.get("/track/{event_id}")
def api_track(event_id: str) -> dict[str, Any]:
    return {"batched": track(event_id)}
