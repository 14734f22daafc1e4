"""A FastAPI app guarded by runtime_guard, served by uvicorn with several workers.

Run (from the repository root; add ``EXAMPLE_LEAK=cache,redis`` to switch the leaks on)::

    uvicorn --app-dir examples fastapi_app:app --workers 2 --port 8001

Each worker installs its guard in the lifespan and, on ``restart_requested``, shuts down
through uvicorn's graceful path; the uvicorn supervisor starts a fresh one.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from leaky import GUARDED, handle

from runtime_guard.integrations.asgi import GuardMiddleware, lifespan
from runtime_guard.integrations.uvicorn import use_error_log

app = FastAPI(lifespan=lifespan() if GUARDED else None)
if GUARDED:
    app.add_middleware(GuardMiddleware, exempt=("/admin",), metrics_path="/metrics")
    use_error_log()  # the guard's lines in uvicorn's log too, not only the root logger's


@app.get("/")
def index() -> dict[str, Any]:
    return handle("/")


@app.get("/admin/ping")
def admin_ping() -> dict[str, Any]:
    return {"ok": True}
