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

The hot paths' statements (``Prepared``) go to asyncpg directly on PostgreSQL, without
SQLAlchemy's execution layers, on the connection and in the transaction SQLAlchemy
manages (an error raised as SQLAlchemy raises it); on SQLite SQLAlchemy runs them.
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
# the key of a read session's ``info`` that is True when its connection is in autocommit
AUTOCOMMIT = "autocommit"


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def read_sessionmaker(
    engine: AsyncEngine, group_commit: object | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions for GET requests: autocommit on PostgreSQL (see the module docstring).

    With ``group_commit`` (an ``app.services.audit.GroupCommit``), a read's audit
    event is written by group commit rather than in the read's session.
    """
    info: dict[str, Any] = {} if group_commit is None else {GROUP_COMMIT: group_commit}
    target = engine
    if is_postgres(engine):
        target = engine.execution_options(isolation_level="AUTOCOMMIT")
        info[AUTOCOMMIT] = True
    return async_sessionmaker(target, expire_on_commit=False, autoflush=False, info=info)


async def core(db: AsyncSession) -> AsyncConnection:
    """``db``'s connection, in its transaction, for the hot paths' Core statements.

    A statement executed there skips the ORM's execution and result layers
    (ORM compile state, ``loading.instances``): same SQL, same transaction, same
    rows, with attribute access by column name.
    """
    return await db.connection()


# Called with the connection, the text and the parameters of each statement ``Prepared``
# runs on asyncpg directly, as SQLAlchemy's ``before_cursor_execute`` event (which does
# not see them) is called: the statement budgets count both.
raw_statement_listeners: list[Callable[[Connection, str, tuple[Any, ...]], None]] = []


class Prepared:
    """A hot path's Core statement, run on asyncpg directly on PostgreSQL.

    The statement is compiled once; its text and positional parameters go to asyncpg
    (which prepares it once per connection), and rows come back as named tuples with
    SQLAlchemy's own bind and result processors applied (``UTCDateTime``). It skips
    SQLAlchemy's execution layers: about 0.1 ms of CPU per statement through
    ``AsyncConnection.execute``, more through the session (issue 20).

    It runs on the connection SQLAlchemy gave the session (or on the connection given):
    in a write's transaction, BEGIN is sent first when it has not been yet, and
    SQLAlchemy commits or rolls back as always; in a GET's autocommit it commits on its
    own. An error goes through SQLAlchemy's own error handling (``_report``): the same
    ``sqlalchemy.exc`` exception, and the same invalidation of a lost connection, as if
    SQLAlchemy had run the statement.

    On SQLite, and for a statement this cannot compile faithfully (expanding or
    computed parameters; unnamed, duplicate or keyword-named columns), SQLAlchemy runs
    it.

    ``bind``: a mapped class the session's connection is chosen by (a session bound
    table by table has no single bind).
    """

    __slots__ = ("_pg", "bind", "statement")

    def __init__(self, statement: Any, bind: type | None = None) -> None:
        self.statement = statement
        self.bind = bind
        self._pg: _Compiled | None = None

    async def all(self, db: AsyncSession | AsyncConnection, params: dict[str, Any]) -> list[Any]:
        """The statement's rows (none for a statement that returns none)."""
        if isinstance(db, AsyncConnection):
            conn = db
        elif self.bind is None:
            conn = await db.connection()
        else:
            conn = await db.connection(bind_arguments={"mapper": self.bind})
        adapted = _asyncpg_adapter(conn)
        if adapted is not None:
            compiled = self._pg or self._compile(conn)
            if compiled.faithful:
                return await _run(conn, adapted, compiled, params)
        result = await conn.execute(self.statement, params)
        return list(result.all()) if result.returns_rows else []

    async def first(self, db: AsyncSession | AsyncConnection, params: dict[str, Any]) -> Any:
        rows = await self.all(db, params)
        return rows[0] if rows else None

    async def scalar(self, db: AsyncSession | AsyncConnection, params: dict[str, Any]) -> Any:
        """The first column of the first row, or None."""
        rows = await self.all(db, params)
        return rows[0][0] if rows else None

    def _compile(self, conn: AsyncConnection) -> _Compiled:
        self._pg = _Compiled(self.statement, conn.dialect)
        return self._pg


@cache
def prepared(statement: Any, bind: type | None = None) -> Prepared:
    """The one ``Prepared`` of ``statement``, a statement built once (a module constant
    or a cached builder's), so that it is compiled for asyncpg once."""
    return Prepared(statement, bind)


def _asyncpg_adapter(conn: AsyncConnection) -> Any | None:
    """SQLAlchemy's adapter of the asyncpg connection under ``conn``; None elsewhere."""
    if conn.dialect.name != "postgresql" or conn.sync_connection is None:
        return None
    return getattr(conn.sync_connection.connection, "dbapi_connection", None)


async def _run(
    conn: AsyncConnection, adapted: Any, compiled: _Compiled, params: dict[str, Any]
) -> list[Any]:
    """Run ``compiled`` on ``conn``, in the transaction SQLAlchemy began there (none in
    autocommit); an error is raised as SQLAlchemy raises it (``_report``)."""
    arguments = compiled.arguments(params)
    for listener in raw_statement_listeners:
        listener(conn.sync_connection, compiled.sql, tuple(arguments))  # type: ignore[arg-type]
    try:
        if adapted._transaction is None:  # SQLAlchemy's adapter begins on first use
            await adapted._start_transaction()  # (nothing to begin in autocommit)
        records = await adapted.driver_connection.fetch(compiled.sql, *arguments)
    except Exception as exc:
        await conn.run_sync(_report, adapted, exc, compiled.sql, tuple(arguments))
        raise  # not reached: _report raises
    except BaseException:
        # cancelled mid-statement: the connection's state is unknown, as SQLAlchemy
        # treats an exit exception during a statement
        conn.sync_connection.invalidate()  # type: ignore[union-attr]
        raise
    return compiled.rows(records)


def _report(
    sync_conn: Connection, adapted: Any, error: Exception, sql: str, arguments: tuple[Any, ...]
) -> None:
    """Raise ``error`` as SQLAlchemy would have, had it run the statement: the adapter
    turns asyncpg's error into its DBAPI error, and the connection's own handler wraps
    it (``sqlalchemy.exc``) and invalidates a lost connection. In a greenlet (run_sync),
    as invalidation closes the connection."""
    try:
        adapted._handle_exception(error)
    except Exception as dbapi_error:
        sync_conn._handle_dbapi_exception(dbapi_error, sql, arguments, None, None)
    raise error  # not reached: both of the above raise


class _Compiled:
    """One statement compiled for asyncpg: its text, how to order its parameters and
    how to turn asyncpg's records into rows (named tuples; plain tuples for a statement
    whose columns SQLAlchemy does not know, such as ``text()`` without ``.columns()``).
    ``faithful``: asyncpg can run it as SQLAlchemy would."""

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
        # what asyncpg can run as SQLAlchemy would: positional parameters, each given or
        # with a value, and columns (if any) that make a named tuple
        self.faithful = bool(
            compiled.positiontup is not None
            and not any(b.expanding or b.literal_execute or b.callable for b in binds)
            and len(set(keys)) == len(keys)
            and all(k.isidentifier() and not iskeyword(k) and not k.startswith("_") for k in keys)
        )
        row_type: Any = namedtuple("Row", keys) if self.faithful and keys else None  # noqa: PYI024
        self._row: Any = row_type._make if row_type is not None else tuple
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
            return [make(r) for r in records]
        out = []
        for r in records:
            values = list(r)
            for i, process in self._result:
                values[i] = process(values[i])
            out.append(make(values))
        return out
