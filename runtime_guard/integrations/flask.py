"""Flask: ``init_app(app, **options)`` installs the guard and wraps the app's WSGI callable.

::

    from flask import Flask
    from runtime_guard.integrations.flask import init_app

    app = Flask(__name__)
    init_app(app, memory_limit="1GiB", exempt=("/admin",), metrics_path="/metrics")

Options are :func:`runtime_guard.install` options and the middleware's (``health_path``,
``live_path``, ``ready_path``, ``shed_at``, ``retry_after``, ``exempt``, ``status_path``,
``metrics_path``, ``detail``, ``status_token``);
``app.config["RUNTIME_GUARD"]`` (a dict) supplies defaults for both.
"""

from __future__ import annotations

from typing import Any

import runtime_guard
from runtime_guard.guard import Guard
from runtime_guard.integrations._http import missing_extra, split_options
from runtime_guard.integrations.wsgi import GuardMiddleware

try:
    import flask
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("flask", "flask", "flask") from exc

__all__ = ["EXTENSION", "init_app"]

EXTENSION = "runtime_guard"
"""Key of ``app.extensions`` holding the installed :class:`~runtime_guard.Guard`."""


def init_app(app: flask.Flask, *, install: bool = True, **options: Any) -> Guard | None:
    """Wrap ``app.wsgi_app`` in the guard's middleware and (unless ``install=False``) install it.

    With ``install=False`` the middleware acts on whatever guard is installed later (the
    gunicorn ``post_fork`` hook, for instance). Returns the guard, or ``None`` then.
    """
    merged = {**dict(app.config.get("RUNTIME_GUARD") or {}), **options}
    guard_options, middleware_options = split_options(merged)
    guard = runtime_guard.install(**guard_options) if install else None
    app.wsgi_app = GuardMiddleware(app.wsgi_app, **middleware_options)  # type: ignore[method-assign]
    app.extensions[EXTENSION] = guard
    return guard
