"""Orders in PostgreSQL through SQLAlchemy's ORM and through psycopg directly."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Integer, String, create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "leaksuite_orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer: Mapped[str] = mapped_column(String(64))
    total: Mapped[int] = mapped_column(Integer)


_engines: dict[str, Engine] = {}


def engine(url: str) -> Engine:
    """One engine per database for the process, tables made on first use."""
    found = _engines.get(url)
    if found is None:
        found = _engines[url] = create_engine(url, pool_size=2, max_overflow=0)
        Base.metadata.create_all(found)
        with Session(found) as session, session.begin():
            if session.scalar(select(Order.id).limit(1)) is None:
                session.add_all(
                    Order(id=n, customer=f"customer-{n % 10}", total=n * 10) for n in range(1, 51)
                )
    return found


def orders_of(url: str, customer: str) -> list[dict[str, Any]]:
    """A session per request, closed by its context manager."""
    with Session(engine(url)) as session:
        rows = session.scalars(select(Order).where(Order.customer == customer)).all()
        return [{"id": row.id, "total": row.total} for row in rows]


_recent_orders: list[Order] = []


def orders_of_kept(url: str, customer: str) -> int:
    """Keeps every loaded ORM object "for the dashboard": detached, never dropped."""
    with Session(engine(url)) as session:
        query = select(Order).where(Order.customer == customer)
        rows = session.scalars(query).all()  # LEAK: orm_objects_kept
        _recent_orders.extend(rows)
        return len(rows)


def order_count(dsn: str) -> int:
    """A psycopg connection per call, closed by its context manager."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_catalog.pg_class").fetchone()
        return int(row[0]) if row else 0


_report_connections: dict[int, psycopg.Connection[Any]] = {}


def order_count_for_report(dsn: str, report_id: int) -> int:
    """A connection per report, kept in a dict "to reuse later" and never closed."""
    conn = psycopg.connect(dsn)  # LEAK: db_connection_per_call
    _report_connections[report_id] = conn
    row = conn.execute("SELECT count(*) FROM pg_catalog.pg_class").fetchone()
    return int(row[0]) if row else 0
