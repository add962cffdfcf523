"""Recording audit events.

``record()`` writes one event in the caller's transaction: the event commits or
rolls back with the action it describes. A read (GET) has nothing else to
commit: its event goes to the worker's ``GroupCommit``, which writes the events
of concurrent reads in one statement and one COMMIT, and the read is answered
only once its event has committed. Events carry identifiers and small
detail objects only; never plaintext, ciphertext, keys or tokens (callers pass
ids, counts, field ids and purposes; ``scrub_detail`` replaces any long opaque
run that looks like key material or ciphertext with ``[redacted]``, so a bug
that passes one cannot leak it and a caller's odd input never fails a request).

The leaf of the Merkle log is the RFC 8785 encoding of the event object stored
in ``audit_event.canonical``. The sequencer (``app.services.sequencer``) later
gives each committed event its log position.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app import errors
from app.context import client_request_id_var, request_id_var
from app.crypto.canonical import canonical_text
from app.db import GROUP_COMMIT, prepared
from app.dialect import is_postgres
from app.identity import Actor as Actor  # re-exported: callers record as an Actor
from app.models.tables import AuditEvent, AuditPending, table_of
from app.models.types import leaf_time_text, utcnow
from app.vocab import AuditAction, AuditOutcome

Action = AuditAction
Outcome = AuditOutcome


@dataclass
class PendingEvent:
    actor: Actor
    action: Action
    resource_type: str
    resource_id: str | None
    outcome: Outcome = Outcome.OK
    subject_agency: str | None = None
    grant: dict[str, Any] | None = None
    purpose: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def denied(
    actor: Actor,
    action: Action,
    resource_type: str,
    resource_id: str | None,
    detail: dict[str, Any],
    *,
    subject_agency: str | None = None,
) -> PendingEvent:
    """The event of a refusal, carried on the error and written after the rollback."""
    return PendingEvent(
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id[:128] if resource_id is not None else None,
        outcome=Outcome.DENIED,
        subject_agency=subject_agency,
        detail=detail,
    )


# Key material and ciphertext, base64 encoded, are long runs that mix upper and
# lower case (32 random bytes give 43 characters; the chance that they hold no
# upper- or no lower-case letter is below 1e-9). Reason codes, ids and slugs
# are lower case, so a long one is kept.
_OPAQUE = re.compile(r"[A-Za-z0-9_+/=-]{43,}")
REDACTED = "[redacted]"


def _opaque(match: re.Match[str]) -> str:
    run = match.group()
    mixed = any(c.isupper() for c in run) and any(c.islower() for c in run)
    return REDACTED if mixed else run


def scrub_detail(value: Any) -> Any:
    """``value`` with every opaque run that looks like key material redacted."""
    if isinstance(value, str):
        if type(value) is str and len(value) < 43:
            return value  # shorter than a run (most: ids, codes); re.sub would copy a subclass
        return _OPAQUE.sub(_opaque, value)
    if isinstance(value, dict):
        return {k: scrub_detail(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_detail(v) for v in value]
    return value


def build_event(p: PendingEvent, *, ts: datetime, event_id: str) -> dict[str, Any]:
    """The event object whose RFC 8785 bytes form the Merkle leaf."""
    return {
        "event_id": event_id,
        "ts": leaf_time_text(ts),
        "actor": p.actor.client_id,
        "actor_agency": p.actor.agency_id,
        "role": p.actor.role,
        "action": str(p.action),
        "resource_type": p.resource_type,
        "resource_id": p.resource_id,
        "subject_agency": p.subject_agency,
        "outcome": str(p.outcome),
        "request_id": request_id_var.get(),
        "client_request_id": client_request_id_var.get(),
        "grant": p.grant,
        "purpose": p.purpose,
        "detail": scrub_detail(p.detail),
    }


def _row(p: PendingEvent) -> dict[str, Any]:
    ts = utcnow()
    event_id = str(uuid.uuid4())
    event = build_event(p, ts=ts, event_id=event_id)
    return {"event_id": event_id, "ts": ts, "canonical": canonical_text(event)}


_EVENTS = table_of(AuditEvent)
_QUEUE = table_of(AuditPending)
# What a writer of audit_event supplies: the id is the database's, and the query
# columns (actor, agencies, action, resource, outcome) are generated from canonical.
EVENT_COLUMNS = ("event_id", "ts", "canonical")


def _queued(values: Any) -> Any:
    """PostgreSQL: insert events and their queue entries in one statement (a CTE)."""
    written = insert(_EVENTS).values(values).returning(_EVENTS.c.id).cte("written")
    return insert(_QUEUE).from_select(["event_id"], select(written.c.id))


# the usual case, one event, built once with bind parameters
_RECORD_ONE_PG = _queued({c: bindparam(c, type_=_EVENTS.c[c].type) for c in EVENT_COLUMNS})


# Group commit on PostgreSQL: any number of events and their queue entries in one
# statement prepared once (arrays, so the text does not depend on the batch size).
_RECORD_MANY_PG = text(
    "WITH written AS (INSERT INTO audit_event (event_id, ts, canonical) "
    "SELECT e, t, c FROM unnest(CAST(:event_ids AS varchar[]), CAST(:tss AS timestamptz[]), "
    "CAST(:canonicals AS text[])) AS u(e, t, c) RETURNING id) "
    "INSERT INTO audit_pending (event_id) SELECT id FROM written"
)

_SQLITE_ROWS = 500
log = logging.getLogger("refgate.audit")


async def _write_batch(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert events and their queue entries on ``conn`` (in its transaction)."""
    if conn.dialect.name == "postgresql":
        await prepared(_RECORD_MANY_PG).all(conn, {
            "event_ids": [r["event_id"] for r in rows],
            "tss": [r["ts"] for r in rows],
            "canonicals": [r["canonical"] for r in rows],
        })
        return
    for start in range(0, len(rows), _SQLITE_ROWS):  # within SQLite's bound-variable limit
        chunk = rows[start:start + _SQLITE_ROWS]
        ids = (
            await conn.execute(insert(_EVENTS).values(chunk).returning(_EVENTS.c.id))
        ).scalars().all()
        await conn.execute(insert(_QUEUE), [{"event_id": i} for i in ids])


class GroupCommit:
    """Reads' audit events, written by group commit (one per worker process).

    ``record()`` of a GET (``app.db.transaction`` puts this object in the read
    session's ``info``) hands its event here and waits until the event has
    committed: the request's response is released only after its event is
    durable. Events that arrive while a batch is being written wait for the next
    batch; when nothing is in flight a batch starts at once (no timer). Each
    batch is one statement on PostgreSQL, committed on its own (autocommit: one
    round trip), and two statements and a COMMIT on SQLite. When a
    batch fails, every request waiting on it fails with 503 and is not served.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine  # its own pool: waiting reads hold the main pool's connections
        # PostgreSQL: the batch is one statement, so it runs in autocommit and
        # commits on its own (one round trip instead of BEGIN, INSERT, COMMIT);
        # SQLite's batch is two statements and keeps its transaction.
        self._autocommit = is_postgres(engine)
        self._waiting: list[tuple[list[dict[str, Any]], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, rows: list[dict[str, Any]]) -> None:
        """Return once ``rows`` have committed; raise ``ServiceUnavailable`` if they did not."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._commit(batch)
        finally:
            self._writer = None

    async def _commit(self, batch: list[tuple[list[dict[str, Any]], asyncio.Future[None]]]) -> None:
        events = [row for rows, _ in batch for row in rows]
        try:
            if self._autocommit:
                async with self.engine.connect() as conn:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                    await _write_batch(conn, events)
            else:
                async with self.engine.begin() as conn:
                    await _write_batch(conn, events)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled at shutdown: fail the waiters, stop
                self._fail(batch)
                raise
            log.warning("audit batch of %d events failed: %s", len(batch), type(exc).__name__)
            self._fail(batch)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    @staticmethod
    def _fail(batch: list[tuple[list[dict[str, Any]], asyncio.Future[None]]]) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(
                    errors.ServiceUnavailable(
                        "the audit log could not record this read; it was not served",
                        headers={"Retry-After": "1"},
                    )
                )

    async def close(self) -> None:
        """Let the batch in flight finish, then close the connection (at shutdown)."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait({writer})
        await self.engine.dispose()


async def record_pending(session: AsyncSession, *events: PendingEvent) -> None:
    """Append events in the caller's transaction: one statement on PostgreSQL, two on SQLite.

    In a GET's session (``app.db``) the events go to the worker's ``GroupCommit``
    instead, and this returns once they have committed.
    """
    if not events:
        return
    rows = [_row(p) for p in events]
    group: GroupCommit | None = session.info.get(GROUP_COMMIT)
    if group is not None:
        await group.submit(rows)
        return
    # the bind of audit_event, not .bind: a session bound per table (binds=...) has no .bind
    if is_postgres(session, AuditEvent):
        if len(rows) == 1:
            await prepared(_RECORD_ONE_PG, AuditEvent).all(session, rows[0])
        else:
            await session.execute(_queued(rows))
        return
    ids = (
        (
            await session.execute(
                insert(_EVENTS).returning(_EVENTS.c.id, sort_by_parameter_order=True),
                rows,
            )
        )
        .scalars()
        .all()
    )
    await session.execute(insert(_QUEUE), [{"event_id": i} for i in ids])


async def record(
    session: AsyncSession,
    actor: Actor,
    action: Action,
    resource_type: str,
    resource_id: str | None,
    *,
    outcome: Outcome = Outcome.OK,
    subject_agency: str | None = None,
    grant: dict[str, Any] | None = None,
    purpose: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record one event in the caller's transaction."""
    await record_pending(
        session,
        PendingEvent(
            actor=actor,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            outcome=outcome,
            subject_agency=subject_agency,
            grant=grant,
            purpose=purpose,
            detail=detail or {},
        ),
    )
