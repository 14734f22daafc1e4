import itertools

import pytest
from shop import app as web

ids = itertools.count(120_000)


@pytest.mark.no_leaks
def test_app_handle(app):
    assert '"user": "bob"' in app.handle(f"/items/{next(ids)}", "bob")


@pytest.mark.no_leaks
def test_request_log_on_app(app):
    app.handle_logged(f"/items/{next(ids)}", "bob")


@pytest.mark.no_leaks
def test_unbounded_deque():
    web.remember_request("/cart", "bob", next(ids))


@pytest.mark.no_leaks
def test_event_list():
    web.record_event(next(ids), "view")
