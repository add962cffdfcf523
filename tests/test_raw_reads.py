"""The hot paths' statements on PostgreSQL run on asyncpg directly (``app.db.Prepared``).

- they give the rows SQLAlchemy gives, column for column (the recipient's relation
  and grants, every inbox page statement), with SQLAlchemy's result processing
  (aware UTC datetimes);
- a recipient's read and an inbox page reach asyncpg without SQLAlchemy's cursor;
- on SQLite, and for a statement this cannot compile faithfully, SQLAlchemy runs it;
- in a write's transaction, statements run on asyncpg in SQLAlchemy's transaction
  (committed and rolled back with it); in a GET's autocommit each commits on its own;
- an error is raised as SQLAlchemy raises it (the same exception class, and a lost
  connection invalidated), and nothing is run twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import bindparam, event, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError
from sqlmodel import col

from app import authz
from app.authz.referrals import _ACTIVE_GRANTS, _relation_query
from app.db import Prepared, prepared, raw_statement_listeners
from app.models.tables import Referral
from app.services.referrals.inbox import _page_query
from tests.taskforce import TaskForce

postgres_only = pytest.mark.parametrize("backend", ["postgresql"])
FIELDS = {"full_name": "Maria Example", "phone": "+1 555 0100"}
CONSENT = {f: {"legal": "service_provision", "police": "investigation"} for f in FIELDS}


async def _send(tf: TaskForce, client: httpx.AsyncClient) -> str:
    body = tf.seal("shelter", FIELDS, CONSENT)
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    return str(body["manifest"]["referral_id"])


def _caller(tf: TaskForce, name: str) -> Any:
    """What ``authz.params`` reads of a caller: its agency."""
    return SimpleNamespace(agency_id=tf[name].agency_id)


class _Seen:
    """Statements SQLAlchemy's cursor ran, and those run on asyncpg directly."""

    def __init__(self, app: Any) -> None:
        self.engine = app.state.engine.sync_engine
        self.cursor: list[str] = []
        self.raw: list[str] = []

    def _before(self, _c: Any, _cu: Any, statement: str, *_: Any) -> None:
        self.cursor.append(statement)

    def _raw(self, _conn: Any, statement: str, _args: Any) -> None:
        self.raw.append(statement)

    def __enter__(self) -> _Seen:
        event.listen(self.engine, "before_cursor_execute", self._before)
        raw_statement_listeners.append(self._raw)
        return self

    def __exit__(self, *_: object) -> None:
        raw_statement_listeners.remove(self._raw)
        event.remove(self.engine, "before_cursor_execute", self._before)


@postgres_only
async def test_raw_rows_are_sqlalchemys_rows(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    rids = [await _send(tf, client) for _ in range(3)]
    now = datetime.now(UTC)
    cases: list[tuple[Prepared, dict[str, Any]]] = []
    for name, le in (("legal", False), ("police", True)):
        values = authz.params(_caller(tf, name), now, referral_id=rids[0])
        cases += [
            (prepared(_relation_query(content, False, le)), values) for content in (False, True)
        ]
        cases.append((prepared(_ACTIVE_GRANTS), values))
    for name, le in (("shelter", False), ("legal", False), ("police", True)):
        for box in ("sent", "received"):
            values = {
                **authz.params(_caller(tf, name), now), "page_rows": 10, "urgency": "routine",
                "since": datetime(2020, 1, 1, tzinfo=UTC), "status_filter": "received",
                "after_ts": datetime(2100, 1, 1, tzinfo=UTC), "after_id": "z",
            }
            for flags in ((False,) * 4, (True,) * 4):
                cases.append((prepared(_page_query(box, le, *flags)), values))
    found = 0
    async with app.state.read_sessionmaker() as db:
        conn = await db.connection()
        for read, values in cases:
            with _Seen(app) as seen:
                raw = await read.all(db, values)
            assert seen.raw, read.statement  # asyncpg …
            assert not seen.cursor, read.statement  # … not SQLAlchemy's cursor
            expected = (await conn.execute(read.statement, values)).all()
            assert [tuple(r) for r in raw] == [tuple(r) for r in expected], read.statement
            assert [r._fields for r in raw[:1]] == [tuple(r._fields) for r in expected[:1]]
            for row in raw:
                for value in row:
                    if isinstance(value, datetime):
                        assert value.tzinfo is UTC  # UTCDateTime's result processing
            found += len(raw)
    assert found >= 10  # the cases above found rows, not only empty pages


@postgres_only
async def test_a_recipients_read_and_inbox_reach_asyncpg_directly(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    rid = await _send(tf, client)
    headers = await tf.headers("legal")
    for url in (f"/v1/referrals/{rid}", "/v1/referrals?box=received"):
        with _Seen(app) as seen:
            r = await client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        assert seen.raw, url
        assert not [s for s in seen.cursor if s.lstrip().upper().startswith("SELECT REFERRAL")]


async def test_a_write_goes_to_asyncpg_and_sqlite_to_sqlalchemy(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    await _send(tf, client)
    read = Prepared(select(col(Referral.id)))
    postgres = app.state.engine.dialect.name == "postgresql"
    async with app.state.sessionmaker() as db, db.begin():  # a write's transaction
        with _Seen(app) as seen:
            rows = await read.all(db, {})
    assert len(rows) == 1
    assert bool(seen.raw) is postgres
    assert bool(seen.cursor) is not postgres
    async with app.state.read_sessionmaker() as db:
        with _Seen(app) as seen:
            assert [tuple(r) for r in await read.all(db, {})] == [tuple(rows[0])]
    assert bool(seen.raw) is postgres
    assert bool(seen.cursor) is not postgres


_BUMP = Prepared(
    text("UPDATE referral SET version = version + 1 WHERE id = :id RETURNING version")
)
_VERSION = select(col(Referral.version)).where(col(Referral.id) == bindparam("id"))


async def _version(app: Any, rid: str) -> int:
    async with app.state.sessionmaker() as db:
        return int(await db.scalar(_VERSION, {"id": rid}))


async def _rolled_back_and_served_again(app: Any, rid: str) -> None:
    """The failed transaction's bump was rolled back, and the pool serves a new one."""
    assert await _version(app, rid) == 1
    async with app.state.sessionmaker() as db, db.begin():
        assert await _BUMP.scalar(db, {"id": rid}) == 2


@postgres_only
async def test_raw_writes_are_in_sqlalchemys_transaction(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    """BEGIN is sent before the first raw statement; SQLAlchemy's rollback undoes it and
    its commit keeps it, with SQLAlchemy's own statements in the same transaction."""
    rid = await _send(tf, client)
    async with app.state.sessionmaker() as db:
        async with db.begin():
            with _Seen(app) as seen:
                assert await _BUMP.all(db, {"id": rid}) == [(2,)]  # the first statement
                assert await db.scalar(_VERSION, {"id": rid}) == 2  # SQLAlchemy sees it
            assert seen.raw
            await db.rollback()
    assert await _version(app, rid) == 1
    async with app.state.sessionmaker() as db, db.begin():
        assert await db.scalar(_VERSION, {"id": rid}) == 1  # SQLAlchemy began it
        assert await _BUMP.scalar(db, {"id": rid}) == 2
    assert await _version(app, rid) == 2

    async def bump_then_fail() -> None:
        async with app.state.sessionmaker() as db, db.begin():
            await _BUMP.all(db, {"id": rid})
            raise RuntimeError("after the write")

    with pytest.raises(RuntimeError, match="after the write"):
        await bump_then_fail()
    assert await _version(app, rid) == 2


@postgres_only
async def test_a_raw_error_in_a_transaction_is_sqlalchemys_error(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    """A unique violation is SQLAlchemy's IntegrityError (the app's handlers see what
    they always saw); the transaction rolls back and the connection serves again."""
    rid = await _send(tf, client)
    duplicate = Prepared(text(
        "INSERT INTO referral (id, sender_agency, sender_kid, created_at, received_at, "
        "version, manifest_json, signature) SELECT id, sender_agency, sender_kid, "
        "created_at, received_at, version, manifest_json, signature FROM referral "
        "WHERE id = :id"
    ))

    async def bump_then_duplicate() -> None:
        async with app.state.sessionmaker() as db, db.begin():
            await _BUMP.all(db, {"id": rid})
            await duplicate.all(db, {"id": rid})

    with pytest.raises(IntegrityError) as raised:
        await bump_then_duplicate()
    assert not raised.value.connection_invalidated
    await _rolled_back_and_served_again(app, rid)


@postgres_only
async def test_a_connection_lost_in_a_transaction_is_invalidated(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    """The server ends the backend mid-transaction: SQLAlchemy's DBAPIError with
    ``connection_invalidated`` (the app answers 503), and the pool replaces it."""
    rid = await _send(tf, client)

    async def bump_lose_bump() -> None:
        async with app.state.sessionmaker() as db, db.begin():
            await _BUMP.all(db, {"id": rid})
            pid = await db.scalar(text("SELECT pg_backend_pid()"))
            async with app.state.sessionmaker() as other, other.begin():
                await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await _BUMP.all(db, {"id": rid})

    with pytest.raises(DBAPIError) as raised:
        await bump_lose_bump()
    assert raised.value.connection_invalidated
    await _rolled_back_and_served_again(app, rid)


@postgres_only
async def test_a_statement_it_cannot_compile_faithfully_runs_through_sqlalchemy(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    rid = await _send(tf, client)
    expanding = Prepared(select(col(Referral.id)).where(
        col(Referral.id).in_(bindparam("ids", expanding=True))
    ))
    async with app.state.read_sessionmaker() as db:
        with _Seen(app) as seen:
            rows = await expanding.all(db, {"ids": [rid, "other"]})
    assert [r.id for r in rows] == [rid]
    assert not seen.raw
    assert seen.cursor
    # a column named like a Python keyword makes no named tuple: SQLAlchemy's rows
    keyword = Prepared(select(col(Referral.id).label("from"), col(Referral.version)))
    async with app.state.read_sessionmaker() as db:
        with _Seen(app) as seen:
            rows = await keyword.all(db, {})
    assert [tuple(r) for r in rows] == [(rid, 1)]
    assert not seen.raw


@postgres_only
async def test_a_write_in_autocommit_runs_once_and_commits_on_its_own(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    """Nothing is run twice: an error is reported, not retried through SQLAlchemy."""
    rid = await _send(tf, client)
    locks = Prepared(_VERSION.with_for_update())
    async with app.state.read_sessionmaker() as db:
        with _Seen(app) as seen:
            assert await _BUMP.all(db, {"id": rid}) == [(2,)]
            assert [tuple(r) for r in await locks.all(db, {"id": rid})] == [(2,)]
        assert len(seen.raw) == 2
        assert not seen.cursor
        assert await _version(app, rid) == 2  # committed, seen from another connection


@postgres_only
async def test_an_asyncpg_error_is_raised_as_sqlalchemy_raises_it(app: Any) -> None:
    missing = Prepared(
        text("SELECT id FROM no_such_table WHERE id = :id").columns(id=text("id").type)
    )
    async with app.state.read_sessionmaker() as db:
        with _Seen(app) as seen, pytest.raises(ProgrammingError, match="no_such_table") as e:
            await missing.all(db, {"id": "x"})
    assert not e.value.connection_invalidated
    assert seen.raw
    assert not seen.cursor
    async with app.state.read_sessionmaker() as db:  # the pool's connection is still good
        assert (await Prepared(select(col(Referral.id))).all(db, {})) == []
