import itertools

import pytest
from shop import payments

ids = itertools.count(100_000)


def _order():
    return {"id": next(ids), "customer": "alice", "lines": [("sku-1", 2), ("sku-7", 1)]}


@pytest.mark.no_leaks
def test_charge_logs_failure():
    assert not payments.charge(_order())


@pytest.mark.no_leaks
def test_charge_keeping_messages():
    assert not payments.charge_keeping_messages(_order(), [])


@pytest.mark.no_leaks
def test_failures_kept():
    assert not payments.charge_keeping_failures(_order())
