"""Feature vectors kept for "later analysis": numpy arrays appended to a module list."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Flask

from leakapps import common

_history: list[np.ndarray[Any, Any]] = []
_rng = np.random.default_rng(7)


def score(user: str) -> float:
    features = _rng.random(common.PER_REQUEST // 8)  # leak
    _history.append(features)
    return float(features[:16].sum())


app = Flask(__name__)
app.register_blueprint(common.pages)


@app.get("/users/<user>/score")
def user_score(user: str) -> Any:
    return {"score": score(user)}


common.guard_flask(app, lambda: _history)

api = common.fastapi_app(lambda: _history)


@api.get("/users/{user}/score")
def api_user_score(user: str) -> dict[str, Any]:
    return {"score": score(user)}
