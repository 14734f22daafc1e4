"""Connection pools: checkouts held too long, and pools that run out of connections.

:mod:`~runtime_guard.pools.hooks` records each checkout of a SQLAlchemy, psycopg_pool or
redis-py pool with the line that asked for it; :mod:`~runtime_guard.pools.checkouts` keeps
them per pool; :mod:`~runtime_guard.pools.component` judges them on every sample and sends
``checkout_held`` and ``pool_exhausted``.
"""

from runtime_guard.pools.checkouts import (
    Checkout,
    PoolFigures,
    PoolRegistry,
    PoolWatch,
    default_registry,
    transaction_state,
)
from runtime_guard.pools.hooks import LIBRARIES, PoolHooks

__all__ = [
    "LIBRARIES",
    "Checkout",
    "PoolFigures",
    "PoolHooks",
    "PoolRegistry",
    "PoolWatch",
    "default_registry",
    "transaction_state",
]
