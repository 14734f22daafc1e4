"""Product pages: the catalog, prices, and the caches in front of them."""

from __future__ import annotations

import functools
import re
import threading

from cachetools import TTLCache

_BOILERPLATE = "<div class='legal'>" + "Prices include VAT. " * 45 + "</div>"

_catalog: dict[str, dict[str, object]] | None = None
_catalog_lock = threading.Lock()


def catalog() -> dict[str, dict[str, object]]:
    """The catalog, loaded once on first use."""
    global _catalog
    with _catalog_lock:
        if _catalog is None:
            _catalog = {
                f"sku-{n}": {"price": 100 + n, "title": f"Product {n}", "stock": n % 7}
                for n in range(2_000)
            }
    return _catalog


@functools.lru_cache(maxsize=32)
def price_label(sku: str, currency: str) -> str:
    price = int(catalog()[sku]["price"])  # type: ignore[call-overload]
    return f"{price / 100:.2f} {currency}"


def best_sellers_strip(currency: str) -> str:
    """The 20 best sellers' labels: an lru_cache(32) that the first call fills."""
    return " | ".join(price_label(f"sku-{n}", currency) for n in range(20))


@functools.lru_cache(maxsize=32)
def _badge(user_id: int) -> str:
    return f"<span class='badge'>member #{user_id:06d}</span>"


def member_badge(user_id: int) -> str:
    """A badge per visitor, from an lru_cache(maxsize=32): bounded, each visitor new."""
    return _badge(user_id)


_quotes: TTLCache[str, str] = TTLCache(maxsize=64, ttl=300)


def shipping_quote(postcode: str) -> str:
    """Shipping quotes per postcode, cached with a TTL and a bound (cachetools)."""
    quote = _quotes.get(postcode)
    if quote is None:
        quote = f"{postcode}: {len(postcode) * 1.5:.2f} EUR, 2-3 days"
        _quotes[postcode] = quote
    return quote


def search(query: str, titles: list[str]) -> list[str]:
    """Titles matching a query: a pattern compiled per query (re's own bounded cache)."""
    pattern = re.compile(r"\b" + re.escape(query) + r"\w*", re.IGNORECASE)
    return [title for title in titles if pattern.search(title)]


_pages: dict[int, str] = {}


def render_page(request_id: int, sku: str) -> str:
    """The product page, cached by request id: about 1 KB kept per request."""
    item = catalog()[sku]
    title, footer = item["title"], f"<p>req {request_id}</p>"
    html = f"<article><h1>{title}</h1>{_BOILERPLATE}{footer}</article>"  # LEAK: page_cache
    _pages[request_id] = html
    return html


_seen_orders: set[int] = set()


def is_duplicate_order(order_id: int) -> bool:
    """Idempotency check on order ids: the set only grows (about 50 B per order)."""
    if order_id in _seen_orders:
        return True
    _seen_orders.add(order_id * 1_000 + 7)  # LEAK: seen_order_ids
    return False


_RATES = {"EUR": 1.0, "USD": 1.08, "GBP": 0.85, "CHF": 0.96}


class PriceService:
    """Converts prices for a region; its conversion is memoised on the method."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.rates = _RATES

    @functools.cache  # noqa: B019  (the leak under test: the cache keeps every self)
    def convert(self, cents: int, currency: str) -> float:
        return round(cents * self.rates[currency] / 100, 2)


def quote_price(sku: str, currency: str) -> float:
    service = PriceService("eu")  # LEAK: method_cache_keeps_every_service
    return service.convert(int(catalog()[sku]["price"]), currency)  # type: ignore[call-overload]
