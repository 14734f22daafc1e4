import itertools

import pytest
from shop import events

ids = itertools.count(30_000)


@pytest.mark.no_leaks
def test_place_order_signal():
    events.place_order(next(ids))


@pytest.mark.no_leaks
def test_weak_receiver_per_call():
    mailbox = []
    events.place_order_with_weak_receipt(next(ids), mailbox)


@pytest.mark.no_leaks
def test_serializer_per_field_set():
    dumped = events.serializer_for_fields(["id", "total"]).dump({"id": 1, "total": 5})
    assert dumped == {"id": 1, "total": 5}


@pytest.mark.no_leaks
def test_strong_receiver_per_call():
    mailbox = []
    events.place_order_with_receipt(next(ids), mailbox)


@pytest.mark.no_leaks
def test_closure_registry():
    events.register_after_request(next(ids))


@pytest.mark.no_leaks
def test_class_made_per_call():
    serializer = events.serializer_for(["id", "total"], next(ids))
    assert serializer.dump({"id": 1}) == {"id": 1, "total": None}
