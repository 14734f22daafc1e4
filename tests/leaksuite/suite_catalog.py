import itertools

import pytest
from shop import catalog

ids = itertools.count(10_000)


@pytest.mark.no_leaks
def test_catalog_loaded_once():
    assert catalog.catalog()["sku-7"]["stock"] == 0


@pytest.mark.no_leaks
def test_best_sellers_strip():
    assert catalog.best_sellers_strip("EUR").startswith("1.00 EUR")


@pytest.mark.no_leaks
def test_member_badge_bounded_cache():
    assert "member #" in catalog.member_badge(next(ids))


@pytest.mark.no_leaks
def test_shipping_quote_ttl_cache():
    postcode = f"{75000 + next(ids) % 40}"
    assert catalog.shipping_quote(postcode).startswith(postcode)


@pytest.mark.no_leaks
def test_search_compiles_per_query():
    titles = ["Product 1", "Product 12", "Gadget 3"]
    assert catalog.search(f"prod{next(ids) % 500}", titles) == []


@pytest.mark.no_leaks
def test_page_cache():
    assert "<h1>Product 3</h1>" in catalog.render_page(next(ids), "sku-3")


@pytest.mark.no_leaks
def test_seen_order_ids():
    assert not catalog.is_duplicate_order(next(ids))


@pytest.mark.no_leaks
def test_method_cache_keeps_every_service():
    assert catalog.quote_price("sku-5", "USD") == 1.13
