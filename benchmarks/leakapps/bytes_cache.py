"""Rendered reports cached by request id in a module dict: ``bytes`` values that never go."""

from __future__ import annotations

from typing import Any

from flask import Flask

from leakapps import common

_RENDERED: dict[str, bytes] = {}


def render_report(report_id: str) -> bytes:
    body = report_id.encode() * (common.PER_REQUEST // len(report_id) + 1)  # leak
    _RENDERED[report_id] = body
    return body[:32]


app = Flask(__name__)
app.register_blueprint(common.pages)


@app.get("/reports/<report_id>")
def report(report_id: str) -> Any:
    return {"size": len(render_report(report_id))}


common.guard_flask(app, lambda: _RENDERED)

api = common.fastapi_app(lambda: _RENDERED)


@api.get("/reports/{report_id}")
def api_report(report_id: str) -> dict[str, Any]:
    return {"size": len(render_report(report_id))}
