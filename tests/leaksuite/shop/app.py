"""The web application object a test gets from a fixture."""

from __future__ import annotations

import contextvars
import json
from typing import Any

current_request: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "current_request", default=None
)


class App:
    """Routes requests; keeps a log of them for the admin page."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.request_log: list[dict[str, Any]] = []
        self.stats = {"requests": 0, "errors": 0}

    def handle(self, path: str, user: str) -> str:
        """Answers and counts: nothing per request is kept."""
        token = current_request.set({"path": path, "user": user})
        try:
            self.stats["requests"] += 1
            return json.dumps({"path": path, "user": user, "app": self.name})
        finally:
            current_request.reset(token)

    def handle_logged(self, path: str, user: str) -> str:
        """Answers and appends the request to the admin log, which nothing trims."""
        agent = "Mozilla/5.0 (X11)"
        entry = {"path": path, "user": user, "agent": agent}  # LEAK: request_log_on_app
        self.request_log.append(entry)
        return self.handle(path, user)


_recent: Any = None


def recent_requests() -> Any:
    global _recent
    if _recent is None:
        import collections

        _recent = collections.deque()
    return _recent


def remember_request(path: str, user: str, request_id: int) -> None:
    """Remembers each request's summary in a deque with no maxlen."""
    recent_requests().append((request_id, path, user, 200))  # LEAK: unbounded_deque


_events: list[dict[str, Any]] = []


def record_event(request_id: int, kind: str) -> None:
    """Analytics events appended to a module list "until the next flush" that never comes."""
    path = f"/items/{request_id}"
    _events.append({"id": request_id, "kind": kind, "path": path})  # LEAK: event_list
