"""Async handlers and the tasks they start."""

from __future__ import annotations

import asyncio
from typing import Any

_background: set[asyncio.Task[Any]] = set()


async def _fetch_price(sku: str) -> int:
    await asyncio.sleep(0)
    return len(sku) * 100


async def cart_total(skus: list[str]) -> int:
    """Prices every item concurrently and gathers them."""
    prices = await asyncio.gather(*(_fetch_price(sku) for sku in skus))
    return sum(prices)


async def cart_total_task_group(skus: list[str]) -> int:
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_fetch_price(sku)) for sku in skus]
    return sum(task.result() for task in tasks)


async def _record_view(sku: str, views: dict[str, int]) -> None:
    await asyncio.sleep(0)
    views[sku] = views.get(sku, 0) + 1


async def view_product(sku: str, views: dict[str, int]) -> None:
    """Fire-and-forget with the documented pattern: the set drops each task when done."""
    task = asyncio.create_task(_record_view(sku, views))
    _background.add(task)
    task.add_done_callback(_background.discard)
    await asyncio.sleep(0)
    await asyncio.sleep(0)


_started: set[asyncio.Task[Any]] = set()


async def view_product_kept(sku: str, views: dict[str, int]) -> None:
    """Fire-and-forget that keeps every task, done or not: the set only grows."""
    task = asyncio.create_task(_record_view(sku, views))  # LEAK: task_set_only_grows
    _started.add(task)
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def _poll_stock(sku: str) -> None:
    while True:
        await asyncio.sleep(3600)


async def subscribe_stock(sku: str) -> None:
    """Starts a stock poller per request that nothing cancels: pending forever."""
    asyncio.get_running_loop().create_task(_poll_stock(sku))  # LEAK: pending_task_per_call
    await asyncio.sleep(0)


_sessions: dict[int, dict[str, Any]] = {}


async def load_session(session_id: int) -> dict[str, Any]:
    """Session state kept per id, never expired (an async handler's leak)."""
    await asyncio.sleep(0)
    seen = [f"sku-{n}" for n in range(5)]
    state = {"id": session_id, "cart": [], "seen": seen}  # LEAK: async_session_store
    _sessions[session_id] = state
    return state
