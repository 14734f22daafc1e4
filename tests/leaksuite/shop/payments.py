"""Payments through a flaky gateway: errors handled, logged, or kept."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("shop.payments")


class GatewayError(Exception):
    """The payment gateway refused a charge."""


def _send(payload: bytes, order_id: int) -> None:
    if payload:
        raise GatewayError(f"gateway refused order {order_id}")  # LEAK: failures_kept


def _payload(order: dict[str, Any]) -> bytes:
    return (repr(order) * 40).encode()


def charge(order: dict[str, Any]) -> bool:
    """A refused charge is logged with its traceback and forgotten."""
    payload = _payload(order)
    try:
        _send(payload, order["id"])
    except GatewayError:
        log.warning("charge failed for order %s", order["id"], exc_info=True)
        return False
    return True


_failures: list[GatewayError] = []


def charge_keeping_failures(order: dict[str, Any]) -> bool:
    """Keeps every refusal "for the retry job": the exception holds its traceback, whose
    frames hold the payload."""
    payload = _payload(order)
    try:
        _send(payload, order["id"])
    except GatewayError as exc:
        _failures.append(exc)
        return False
    return True


def charge_keeping_messages(order: dict[str, Any], retries: list[str]) -> bool:
    """Keeps only the message of each refusal, in a list the caller empties."""
    payload = _payload(order)
    try:
        _send(payload, order["id"])
    except GatewayError as exc:
        retries.append(str(exc))
        retries.clear()
        return False
    return True
