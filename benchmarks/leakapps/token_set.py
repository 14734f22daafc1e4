"""Tokens remembered to refuse replays, in a module set nobody expires: ``str`` values."""

from __future__ import annotations

from typing import Any

from flask import Flask

from leakapps import common

SEEN_TOKENS: set[str] = set()


def accept(token: str) -> bool:
    signed = f"{token}." + token[:8] * (common.PER_REQUEST // 8)  # leak
    if signed in SEEN_TOKENS:
        return False
    SEEN_TOKENS.add(signed)
    return True


app = Flask(__name__)
app.register_blueprint(common.pages)


@app.get("/login/<token>")
def login(token: str) -> Any:
    return {"ok": accept(token)}


common.guard_flask(app, lambda: SEEN_TOKENS)

api = common.fastapi_app(lambda: SEEN_TOKENS)


@api.get("/login/{token}")
def api_login(token: str) -> dict[str, Any]:
    return {"ok": accept(token)}
