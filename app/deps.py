"""Request dependencies of the HTTP layer: the request's transaction (``Db``).

``transaction()`` opens the one transaction of a request (``app.db`` explains
the rules: commit before the response, a refusal's audit event written after
the rollback, GETs on PostgreSQL in autocommit).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import AUTOCOMMIT
from app.services import audit


@asynccontextmanager
async def open_transaction(request: Request) -> AsyncIterator[AsyncSession]:
    """A session inside one transaction; commit on exit, roll back on error.

    An error that carries an audit event (a refusal) has it written in a
    transaction of its own after the rollback. ``transaction`` and the hot
    routes' flattened dependency (``app.auth.authenticated``) both use this.
    """
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    reads: async_sessionmaker[AsyncSession] = request.app.state.read_sessionmaker
    async with (reads if request.method == "GET" else maker)() as session:
        try:
            if session.info.get(AUTOCOMMIT):
                # a GET on PostgreSQL: each statement commits on its own, so there is
                # nothing to begin or commit (SQLAlchemy's would be about 0.06 ms of CPU)
                yield session
            else:
                async with session.begin():
                    yield session
        except Exception as exc:
            pending = getattr(exc, "audit", None)
            if pending is not None:
                async with maker() as denial_session, denial_session.begin():
                    await audit.record_pending(denial_session, pending)
            raise


async def transaction(request: Request) -> AsyncIterator[AsyncSession]:
    """Yield a session inside one transaction; commit before the response, roll back on error."""
    async with open_transaction(request) as session:
        yield session


Db = Annotated[AsyncSession, Depends(transaction, scope="function")]
