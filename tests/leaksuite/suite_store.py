import itertools

import pytest
from shop import store

ids = itertools.count(70_000)


@pytest.mark.no_leaks
def test_cart_size_shared_client(redis_url):
    assert store.cart_size(redis_url, next(ids)) == 0


@pytest.mark.no_leaks
def test_cart_size_own_client(redis_url):
    assert store.cart_size_own_client(redis_url, next(ids)) == 0


@pytest.mark.no_leaks
def test_redis_client_per_call(redis_url):
    assert store.cart_size_closed_at_exit(redis_url, next(ids)) == 0
