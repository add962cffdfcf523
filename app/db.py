"""Engine and sessions: the one place a transaction is committed.

One request, one transaction. ``app.deps.transaction()`` is a FastAPI dependency with
``scope="function"``: it commits after the route returns and *before* the
response is sent, and rolls back on any exception, so a client never sees 201
for something that did not commit. Services call ``flush()``, never
``commit()``.

A refusal that must leave a trace (a denied read, a refused token) carries its
audit event on the exception; it is written in a transaction of its own after
the action's transaction rolled back, so the denial is recorded and nothing
else is.

GET requests on PostgreSQL run without an explicit transaction (autocommit):
their one write is their audit event, a single statement there (event and
queue entry in one CTE), which is atomic on its own; and at READ COMMITTED each
statement takes its own snapshot inside a transaction too, so the reads see
nothing different. That saves the BEGIN and COMMIT round trips of every read.
The rule that makes this safe, "a GET writes nothing but its audit event", is
checked for every GET route by ``tests/test_statement_budget.py``. On SQLite
the event is two statements, so GETs keep their transaction.

A GET's audit event is not written in its own session at all but handed to the
worker's group commit (``app.services.audit.GroupCommit``): concurrent reads'
events share one multi-row INSERT and one COMMIT, and each read's ``record()``
returns only once its event has committed, so no read is served without its
event (a failed batch fails its reads with 503).
"""

from __future__ import annotations

import uuid
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.config import Settings
from app.dialect import is_postgres, url_is_postgres


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    """The engine; ``pool_size`` gives a fixed-size pool (the audit group commit's own)."""
    url = settings.resolved_database_url
    if not url_is_postgres(url):
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sizes = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": 0}
        engine = create_async_engine(url, connect_args={"timeout": 30}, **sizes)
        _tune_sqlite(engine)
        return engine
    # Up to 2 x db_pool_size connections per worker (RUNBOOK's budget), all of them kept
    # once opened: an overflow connection is closed as soon as it is returned to a full
    # pool, so a load hovering above pool_size opened and closed a PostgreSQL backend
    # (a fork, authentication, asyncpg's type set-up) several times a second.
    engine = create_async_engine(
        url,
        pool_size=pool_size or 2 * settings.db_pool_size,
        max_overflow=0,
        pool_recycle=1800,
    )
    _drop_closed_connections(engine)
    return engine


def _drop_closed_connections(engine: AsyncEngine) -> None:
    """Refuse a pooled connection whose socket is already closed, without a round trip.

    ``pool_pre_ping`` would cost three round trips per checkout (BEGIN, an empty
    statement, ROLLBACK: a third of a read request's CPU, measured). asyncpg marks a
    connection closed as soon as the server drops it (a restart, an idle timeout),
    so checking that flag catches the common case for free; SQLAlchemy then opens a
    fresh connection. A connection that dies between this check and its statement
    fails that one request, and SQLAlchemy invalidates it.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        driver = getattr(dbapi_conn, "driver_connection", None)
        if driver is not None and driver.is_closed():
            raise DisconnectionError("connection closed by the server")


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()


_DATABASE_KEYS: WeakKeyDictionary[Engine, str] = WeakKeyDictionary()


def database_key(bind: Engine | Connection) -> str:
    """A stable name of the database ``bind`` (an engine or a connection) talks to.

    For a per-process cache of database answers (several databases in one process:
    the tests). It is the engine's URL without its password, so two engines on one
    database share it and engines on different databases never do; ``id()`` of an
    engine would not do (a later engine may reuse it once this one is gone). An
    in-memory SQLite database is its engine's alone, so its name adds a random
    suffix. Rendered once per engine.
    """
    engine = bind.engine
    key = _DATABASE_KEYS.get(engine)
    if key is None:
        url = engine.url
        key = url.render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            key += "#" + uuid.uuid4().hex
        _DATABASE_KEYS[engine] = key
    return key


# the key of a read session's ``info`` that holds the worker's GroupCommit
GROUP_COMMIT = "audit_group_commit"


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def read_sessionmaker(
    engine: AsyncEngine, group_commit: object | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions for GET requests: autocommit on PostgreSQL (see the module docstring).

    With ``group_commit`` (an ``app.services.audit.GroupCommit``), a read's audit
    event is written by group commit rather than in the read's session.
    """
    info = {} if group_commit is None else {GROUP_COMMIT: group_commit}
    target = engine
    if is_postgres(engine):
        target = engine.execution_options(isolation_level="AUTOCOMMIT")
    return async_sessionmaker(target, expire_on_commit=False, autoflush=False, info=info)


async def core(db: AsyncSession) -> AsyncConnection:
    """``db``'s connection, in its transaction, for the hot paths' Core statements.

    A statement executed there skips the ORM's execution and result layers
    (ORM compile state, ``loading.instances``): same SQL, same transaction, same
    rows, with attribute access by column name.
    """
    return await db.connection()
