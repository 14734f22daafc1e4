"""An HTTP session made per call and kept "to close at shutdown": clients that pile up."""

from __future__ import annotations

from typing import Any

import requests
from flask import Flask

from leakapps import common

_open_sessions: list[requests.Session] = []


def partner_client(partner: str) -> requests.Session:
    session = requests.Session()  # leak
    session.headers["X-Partner"] = partner
    session.headers["X-Context"] = partner * (common.PER_REQUEST // len(partner) // 2)
    _open_sessions.append(session)
    return session


app = Flask(__name__)
app.register_blueprint(common.pages)


@app.get("/partners/<partner>/quote")
def quote(partner: str) -> Any:
    return {"headers": len(partner_client(partner).headers)}


common.guard_flask(app, lambda: _open_sessions)

api = common.fastapi_app(lambda: _open_sessions)


@api.get("/partners/{partner}/quote")
def api_quote(partner: str) -> dict[str, Any]:
    return {"headers": len(partner_client(partner).headers)}
