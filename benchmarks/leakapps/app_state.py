"""Recent payloads kept on the app object itself (``app.extensions`` / ``app.state``)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from flask import Flask, current_app

from leakapps import common


def remember(recent: list[dict[str, Any]], event_id: str) -> None:
    body = event_id * (common.PER_REQUEST // len(event_id))  # leak
    recent.append({"id": event_id, "body": body})


def create_app() -> Flask:
    app = Flask(__name__)
    app.extensions["recent_events"] = []
    app.register_blueprint(common.pages)

    @app.get("/events/<event_id>")
    def event(event_id: str) -> Any:
        remember(current_app.extensions["recent_events"], event_id)
        return {"kept": len(current_app.extensions["recent_events"])}

    common.guard_flask(app, lambda: app.extensions["recent_events"])
    return app


def create_api() -> Any:
    api = common.fastapi_app(lambda: api.state.recent_events)
    api.state.recent_events = []

    @api.get("/events/{event_id}")
    def api_event(event_id: str, request: Request) -> dict[str, Any]:
        remember(request.app.state.recent_events, event_id)
        return {"kept": len(request.app.state.recent_events)}

    return api
