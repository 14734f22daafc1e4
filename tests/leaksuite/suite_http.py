import itertools

import pytest
from shop import http

ids = itertools.count(60_000)


@pytest.mark.no_leaks
def test_fetch_user_shared_session(upstream):
    assert http.fetch_user(upstream, next(ids))["active"]


@pytest.mark.no_leaks
def test_fetch_user_own_session(upstream):
    assert http.fetch_user_own_session(upstream, next(ids))["active"]


@pytest.mark.no_leaks
def test_fetch_user_httpx(upstream):
    assert http.fetch_user_httpx(upstream, next(ids))["active"]


@pytest.mark.no_leaks
def test_session_kept_in_module_list(upstream):
    assert http.fetch_user_for_tenant(upstream, next(ids))["active"]
