"""Small dialect-aware statements shared by the services."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from app import dialect


async def insert_ignore(session: AsyncSession, model: Any, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; True when the row was inserted.

    Used where a unique key is the guard (assertion jti, idempotency keys): the
    conflict is an answer, not an error, and must not abort the transaction.
    """
    stmt = dialect.insert(session, model).values(**values).on_conflict_do_nothing()
    # an INSERT's result is a CursorResult (AsyncSession.execute is typed as Result)
    result = cast(CursorResult[Any], await session.execute(stmt))
    return bool(result.rowcount)
