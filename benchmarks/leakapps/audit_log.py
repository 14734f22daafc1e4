"""An audit trail of request records, appended to a module list and never trimmed."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask

from leakapps import common


class AuditEntry:
    def __init__(self, user: str, action: str, details: list[str]) -> None:
        self.user = user
        self.action = action
        self.details = details
        self.at = time.time()


AUDIT_LOG: list[AuditEntry] = []


def record(user: str, action: str) -> AuditEntry:
    lines = [f"{user}:{action}:{n:06d}".ljust(58) for n in range(common.PER_REQUEST // 100)]  # leak
    entry = AuditEntry(user, action, lines)
    AUDIT_LOG.append(entry)
    return entry


app = Flask(__name__)
app.register_blueprint(common.pages)


@app.get("/orders/<order_id>/pay")
def pay(order_id: str) -> Any:
    return {"audited": record(order_id, "pay").action}


common.guard_flask(app, lambda: AUDIT_LOG)

api = common.fastapi_app(lambda: AUDIT_LOG)


@api.get("/orders/{order_id}/pay")
def api_pay(order_id: str) -> dict[str, Any]:
    return {"audited": record(order_id, "pay").action}
