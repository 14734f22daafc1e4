"""Signals, hooks and plug-ins: what gets connected per request and what stays connected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blinker import Namespace

signals = Namespace()
order_placed = signals.signal("order-placed")

_notified: list[int] = []


def _count_order(sender: object, **extra: Any) -> None:
    _notified.clear()
    _notified.append(extra["order_id"])


order_placed.connect(_count_order)


def place_order(order_id: int) -> None:
    """Sends the signal to the receivers connected once, at import."""
    order_placed.send("checkout", order_id=order_id)


def place_order_with_receipt(order_id: int, mailbox: list[str]) -> None:
    """Connects a receipt sender per order, strongly, and never disconnects it."""

    def send_receipt(sender: object, **extra: Any) -> None:  # LEAK: strong_receiver_per_call
        if extra["order_id"] == order_id:
            mailbox.append(f"receipt for order {order_id}")

    order_placed.connect(send_receipt, weak=False)
    order_placed.send("checkout", order_id=order_id)
    mailbox.clear()


class ReceiptMailer:
    """A per-order object whose bound method is connected weakly: it goes when it does."""

    def __init__(self, order_id: int, mailbox: list[str]) -> None:
        self.order_id = order_id
        self.mailbox = mailbox

    def on_order(self, sender: object, **extra: Any) -> None:
        if extra["order_id"] == self.order_id:
            self.mailbox.append(f"receipt for order {self.order_id}")


def place_order_with_weak_receipt(order_id: int, mailbox: list[str]) -> None:
    mailer = ReceiptMailer(order_id, mailbox)
    order_placed.connect(mailer.on_order)
    order_placed.send("checkout", order_id=order_id)
    mailbox.clear()


_hooks: dict[str, list[Callable[[dict[str, Any]], None]]] = {"after_request": []}


def register_after_request(request_id: int) -> None:
    """Registers a clean-up hook per request in a process-wide registry: never run or removed."""

    def close_request(context: dict[str, Any]) -> None:  # LEAK: closure_registry
        context.pop(f"request-{request_id}", None)

    _hooks["after_request"].append(close_request)


_serializers: dict[str, type] = {}


class Serializer:
    fields: tuple[str, ...] = ()

    def dump(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {name: obj.get(name) for name in self.fields}


def serializer_for(fields: list[str], request_id: int) -> Serializer:
    """Builds a serializer class for the requested fields, registered under a per-request name."""
    name = f"Serializer_{request_id}"
    cls = type(name, (Serializer,), {"fields": tuple(fields)})  # LEAK: class_made_per_call
    _serializers[name] = cls
    return cls()


def serializer_for_fields(fields: list[str]) -> Serializer:
    """The same, registered under the field set: one class per distinct set, reused."""
    key = ",".join(sorted(fields))
    cls = _serializers.get(key)
    if cls is None:
        name = "Serializer_" + key.replace(",", "_")
        cls = _serializers[key] = type(name, (Serializer,), {"fields": tuple(fields)})
    return cls()
