"""The scenario app under ``uvicorn --workers N``: FastAPI, guarded as the integration's docs say.

``SVC_MODE=guard`` adds the guard's lifespan (a guard per worker, recycling through uvicorn's
graceful shutdown) and middleware; ``none`` and ``stock`` (``--limit-max-requests`` on the
command line) serve it bare.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from svc_work import handle, spike

if os.environ.get("SVC_MODE") == "guard":
    from runtime_guard.integrations.asgi import GuardMiddleware, lifespan

    app = FastAPI(lifespan=lifespan())
    app.add_middleware(GuardMiddleware, exempt=("/admin",))
else:
    app = FastAPI()


@app.get("/")
def index() -> dict[str, Any]:
    return handle("/")


@app.get("/spike")
def big_report() -> dict[str, Any]:
    return spike()


@app.get("/admin/ping")
def ping() -> dict[str, Any]:
    return {"ok": True, "pid": os.getpid()}
