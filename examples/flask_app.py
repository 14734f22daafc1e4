"""A Flask app guarded by runtime_guard, served by gunicorn.

Run (from the repository root; add ``EXAMPLE_LEAK=cache,redis`` to switch the leaks on)::

    gunicorn -c examples/gunicorn.conf.py flask_app:app

Routes: ``/`` (work), ``/admin/ping`` (exempt from shedding), ``/health``, ``/metrics``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from leaky import GUARDED, handle

from runtime_guard.integrations.flask import init_app

app = Flask(__name__)
# The gunicorn hooks install the guard in each worker after the fork; the middleware finds
# it at request time.
if GUARDED:
    init_app(app, install=False, exempt=("/admin",), metrics_path="/metrics")


@app.get("/")
def index() -> Any:
    return jsonify(handle("/"))


@app.get("/admin/ping")
def admin_ping() -> Any:
    return jsonify({"ok": True})
