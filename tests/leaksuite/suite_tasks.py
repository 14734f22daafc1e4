import itertools

import pytest
from shop import tasks

ids = itertools.count(50_000)


@pytest.mark.asyncio
@pytest.mark.no_leaks
async def test_cart_total_gather():
    assert await tasks.cart_total(["sku-1", "sku-22"]) == 1100


@pytest.mark.anyio
@pytest.mark.no_leaks
async def test_cart_total_task_group():
    assert await tasks.cart_total_task_group(["sku-1", "sku-22"]) == 1100


@pytest.mark.asyncio
@pytest.mark.no_leaks
async def test_view_product_background_task():
    views = {}
    await tasks.view_product("sku-9", views)
    assert views == {"sku-9": 1}


@pytest.mark.asyncio
@pytest.mark.no_leaks
async def test_task_set_only_grows():
    views = {}
    await tasks.view_product_kept(f"sku-{next(ids)}", views)


@pytest.mark.asyncio
@pytest.mark.no_leaks
async def test_pending_task_per_call():
    await tasks.subscribe_stock(f"sku-{next(ids)}")


@pytest.mark.anyio
@pytest.mark.no_leaks
async def test_async_session_store():
    state = await tasks.load_session(next(ids))
    assert state["cart"] == []
