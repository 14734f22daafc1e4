import itertools

import pytest
from shop import jobs

ids = itertools.count(40_000)


@pytest.mark.no_leaks
def test_thumbnails_shared_pool():
    assert jobs.make_thumbnails([800, 1600]) == 300


@pytest.mark.no_leaks
def test_thumbnails_own_pool():
    assert jobs.make_thumbnails_own_pool([800, 1600]) == 300


@pytest.mark.no_leaks
def test_email_thread_joined():
    jobs.send_email_in_background(f"user{next(ids)}@example.com")


@pytest.mark.no_leaks
def test_thread_per_call():
    jobs.watch_inventory(f"sku-{next(ids)}")
