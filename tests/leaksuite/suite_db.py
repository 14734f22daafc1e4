import itertools

import pytest
from shop import db

ids = itertools.count(80_000)


@pytest.mark.no_leaks
def test_orders_of_customer(postgres_url):
    assert len(db.orders_of(postgres_url, "customer-3")) == 5


@pytest.mark.no_leaks
def test_order_count(postgres_dsn):
    assert db.order_count(postgres_dsn) > 0


@pytest.mark.no_leaks
def test_orm_objects_kept(postgres_url):
    assert db.orders_of_kept(postgres_url, "customer-4") == 5


@pytest.mark.no_leaks
def test_db_connection_per_call(postgres_dsn):
    assert db.order_count_for_report(postgres_dsn, next(ids)) > 0
