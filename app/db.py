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

Because a GET's connection on PostgreSQL is in autocommit, its hot SELECTs (``Read``)
go to asyncpg directly, without SQLAlchemy's execution layers; anywhere else, and
whenever asyncpg raises, SQLAlchemy runs them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import cache
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


# Called with each statement text ``Read`` runs on asyncpg directly, which SQLAlchemy's
# ``before_cursor_execute`` event does not see (the statement budgets count both).
raw_statement_listeners: list[Callable[[str], None]] = []


class Read:
    """A Core SELECT that a GET on PostgreSQL runs on asyncpg directly.

    A GET's connection on PostgreSQL is in autocommit (``read_sessionmaker``), so a
    statement there needs nothing of SQLAlchemy's execution layers: the statement is
    compiled once, its text and positional parameters are handed to asyncpg (which
    prepares it once per connection), and the rows come back as named tuples with
    SQLAlchemy's own result processors applied (``UTCDateTime``). About 0.1 ms of CPU
    less per statement than through ``AsyncConnection.execute`` (issue 20).

    Everywhere else (SQLite, a write's transaction) it runs through SQLAlchemy, as it
    does when asyncpg raises: the statement is run again there, so a lost connection
    is invalidated and reported exactly as before, and a read has no transaction the
    first attempt could have left half done.
    """

    __slots__ = ("_pg", "statement")

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._pg: _Compiled | None = None

    async def all(self, db: AsyncSession, params: dict[str, Any]) -> list[Any]:
        conn = await db.connection()
        driver = _autocommit_driver(conn)
        if driver is not None:
            compiled = self._pg or self._compile(conn)
            if compiled.raw:
                for listener in raw_statement_listeners:
                    listener(compiled.sql)
                try:
                    records = await driver.fetch(compiled.sql, *compiled.arguments(params))
                except Exception:  # noqa: S110 - run again by SQLAlchemy, which reports it
                    pass
                else:
                    return compiled.rows(records)
        return list((await conn.execute(self.statement, params)).all())

    async def first(self, db: AsyncSession, params: dict[str, Any]) -> Any | None:
        rows = await self.all(db, params)
        return rows[0] if rows else None

    def _compile(self, conn: AsyncConnection) -> _Compiled:
        self._pg = _Compiled(self.statement, conn.dialect)
        return self._pg


@cache
def read_of(statement: Any) -> Read:
    """The one ``Read`` of ``statement``, a statement built once (a module constant or a
    cached builder's), so that it is compiled for asyncpg once."""
    return Read(statement)


def _autocommit_driver(conn: AsyncConnection) -> Any | None:
    """The asyncpg connection under ``conn`` when it is in autocommit, else None."""
    if conn.dialect.name != "postgresql":
        return None
    pooled = conn.sync_connection.connection if conn.sync_connection is not None else None
    adapted = getattr(pooled, "dbapi_connection", None)
    if adapted is None or not getattr(adapted, "autocommit", False):
        return None
    return pooled.driver_connection  # type: ignore[union-attr]


class _Compiled:
    """One statement compiled for asyncpg: its text, how to order its parameters and
    how to turn asyncpg's records into rows. ``raw`` is False for a statement this
    cannot run faithfully (expanding or computed parameters, unnamed or duplicate
    columns) and for one that is not a plain SELECT (a write, or a lock with FOR
    UPDATE, could happen twice): SQLAlchemy runs it."""

    def __init__(self, statement: Any, dialect: Any) -> None:
        from collections import namedtuple
        from keyword import iskeyword

        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        names = tuple(compiled.positiontup or ())
        binds = [compiled.binds[n] for n in names]
        processors = compiled._bind_processors
        self._names = names
        self._defaults = {
            n: b.value for n, b in zip(names, binds, strict=True) if b.value is not None
        }
        self._bind = tuple(processors.get(n) for n in names)
        columns = compiled._result_columns
        keys = [c.keyname for c in columns]
        self.raw = bool(
            # a plain read only: run twice (asyncpg, then SQLAlchemy) it must change nothing
            # (text(...).columns() counts as a select whatever its text says)
            self.sql.lstrip()[:7].upper() == "SELECT "
            and getattr(statement, "_for_update_arg", None) is None
            and compiled.positiontup is not None
            and not any(b.expanding or b.literal_execute or b.callable for b in binds)
            and keys
            and len(set(keys)) == len(keys)
            and all(k.isidentifier() and not iskeyword(k) and not k.startswith("_") for k in keys)
        )
        self._row: Any = namedtuple("Row", keys) if self.raw else tuple  # noqa: PYI024
        self._result = tuple(
            (i, p) for i, c in enumerate(columns)
            if (p := c.type._cached_result_processor(dialect, None)) is not None
        )

    def arguments(self, params: dict[str, Any]) -> list[Any]:
        defaults = self._defaults
        values = [params[n] if n in params else defaults[n] for n in self._names]
        for i, process in enumerate(self._bind):
            if process is not None:
                values[i] = process(values[i])
        return values

    def rows(self, records: list[Any]) -> list[Any]:
        make = self._row
        if not self._result:
            return [make(*r) for r in records]
        out = []
        for r in records:
            values = list(r)
            for i, process in self._result:
                values[i] = process(values[i])
            out.append(make(*values))
        return out
