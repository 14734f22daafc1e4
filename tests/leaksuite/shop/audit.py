"""Logging and auditing of requests: loggers, handlers, warnings, the audit trail."""

from __future__ import annotations

import io
import logging
import warnings

log = logging.getLogger("shop.audit")


def log_request(request_id: int, path: str) -> None:
    """One module-level logger for every request (pytest captures the records)."""
    log.warning("request %s for %s handled", request_id, path)


def request_logger(request_id: int) -> logging.Logger:
    """A logger per request, named after it: logging keeps every logger ever named."""
    logger = logging.getLogger(f"shop.request.{request_id}")  # LEAK: logger_per_request
    logger.setLevel(logging.INFO)
    return logger


def handle_with_request_logger(request_id: int) -> None:
    request_logger(request_id).info("handling request %s", request_id)


_trace_log = logging.getLogger("shop.trace")
_trace_log.propagate = False


def trace_request(request_id: int, sink: io.StringIO) -> None:
    """Adds a handler for the request's trace and never removes it."""
    handler = logging.StreamHandler(sink)  # LEAK: handler_added_per_call
    _trace_log.addHandler(handler)
    _trace_log.warning("trace %s", request_id)


def trace_request_scoped(request_id: int, sink: io.StringIO) -> None:
    """The same trace with the handler removed and closed afterwards."""
    handler = logging.StreamHandler(sink)
    _trace_log.addHandler(handler)
    try:
        _trace_log.warning("trace %s", request_id)
    finally:
        _trace_log.removeHandler(handler)
        handler.close()


def legacy_discount(total: float) -> float:
    """A deprecated helper still called on every request: warns each time."""
    message = "legacy_discount() is deprecated; use pricing.discount()"
    warnings.warn(message, DeprecationWarning, stacklevel=2)
    return round(total * 0.95, 2)


_audit_trail = io.StringIO()


def audit(user: str, action: str, request_id: int) -> None:
    """Appends one line (about 100 B) to the in-memory audit trail, never rotated."""
    # Blind spot from 3.12: StringIO writes into one buffer there, 40 B a call.
    _audit_trail.write(f"user={user} action={action} id={request_id:08d}\n")  # LEAK: audit_trail
