"""The scenario app under gunicorn: Flask, guarded as the integration's docs say.

``SVC_MODE=guard`` wraps it in the guard's middleware (the gunicorn hooks in
``svc_gunicorn.py`` install the guard in each worker); ``none`` and ``stock`` serve it bare.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify
from svc_work import handle, spike

app = Flask(__name__)

if os.environ.get("SVC_MODE") == "guard":
    from runtime_guard.integrations.flask import init_app

    init_app(app, install=False, exempt=("/admin",))


@app.get("/")
def index() -> Any:
    return jsonify(handle("/"))


@app.get("/spike")
def big_report() -> Any:
    return jsonify(spike())


@app.get("/admin/ping")
def ping() -> Any:
    return jsonify({"ok": True, "pid": os.getpid()})
