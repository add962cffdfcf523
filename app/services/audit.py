"""Recording audit events.

``record()`` writes one event in the caller's transaction: the event commits or
rolls back with the action it describes. Events carry identifiers and small
detail objects only; never plaintext, ciphertext, keys or tokens (callers pass
ids, counts, field ids and purposes; ``scrub_detail`` replaces any long opaque
run that looks like key material or ciphertext with ``[redacted]``, so a bug
that passes one cannot leak it and a caller's odd input never fails a request).

The leaf of the Merkle log is the RFC 8785 encoding of the event object stored
in ``audit_event.canonical``. The sequencer (``app.services.sequencer``) later
gives each committed event its log position.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import client_request_id_var, request_id_var
from app.crypto.canonical import canonical_json
from app.dialect import is_postgres
from app.identity import Actor as Actor  # re-exported: callers record as an Actor
from app.models.tables import AuditEvent, AuditPending, table_of
from app.models.types import utcnow
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
        return _OPAQUE.sub(_opaque, value)
    if isinstance(value, dict):
        return {k: scrub_detail(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_detail(v) for v in value]
    return value


def rfc3339(ts: datetime) -> str:
    """The leaf's spelling of a UTC time (fixed width: text order is time order)."""
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def build_event(p: PendingEvent, *, ts: datetime, event_id: str) -> dict[str, Any]:
    """The event object whose RFC 8785 bytes form the Merkle leaf."""
    return {
        "event_id": event_id,
        "ts": rfc3339(ts),
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
    return {"event_id": event_id, "ts": ts, "canonical": canonical_json(event).decode("utf-8")}


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


async def record_pending(session: AsyncSession, *events: PendingEvent) -> None:
    """Append events in the caller's transaction: one statement on PostgreSQL, two on SQLite."""
    if not events:
        return
    rows = [_row(p) for p in events]
    # the bind of audit_event, not .bind: a session bound per table (binds=...) has no .bind
    if is_postgres(session, AuditEvent):
        if len(rows) == 1:
            await session.execute(_RECORD_ONE_PG, rows[0])
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
