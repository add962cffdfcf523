"""Persistence of referrals: the directory read, the rows of a new referral and the
statement(s) that store them (one on PostgreSQL, one per table on SQLite), and the
recipients' statuses as JSON."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    DateTime,
    Text,
    and_,
    any_,
    bindparam,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import vocab
from app.crypto import envelope as env
from app.crypto.canonical import canonical_json
from app.crypto.wire import GrantValue, RequestValue
from app.db import core, prepared
from app.dialect import is_postgres
from app.models.schemas import rfc3339
from app.models.tables import (
    Agency,
    AgencyKey,
    Referral,
    ReferralField,
    ReferralGrant,
    ReferralRecipient,
    WrappedKey,
    table_of,
)
from app.models.types import UTCDateTime
from app.services.referrals.common import parse_time


@dataclass(frozen=True)
class _Member:
    """A directory entry as create, amend and status need it."""

    status: str
    current: dict[str, tuple[str, str]]  # use -> (kid, public key) of its current keys


_DIRECTORY_ROWS = (
    select(
        col(Agency.id),
        col(Agency.status),
        col(AgencyKey.use),
        col(AgencyKey.kid),
        col(AgencyKey.public_key),
    )
    .outerjoin(
        AgencyKey,
        and_(
            col(AgencyKey.agency_id) == col(Agency.id),
            col(AgencyKey.status) == vocab.KeyStatus.CURRENT,
        ),
    )
)
# The agencies as one array parameter on PostgreSQL: one SQL text (and one prepared
# statement) whatever their number, where an expanding IN is re-rendered per execution.
_DIRECTORY_PG = _DIRECTORY_ROWS.where(
    col(Agency.id) == any_(bindparam("agency_ids", type_=postgresql.ARRAY(Text)))
)
_DIRECTORY = _DIRECTORY_ROWS.where(col(Agency.id).in_(bindparam("agency_ids", expanding=True)))


async def _directory(db: AsyncSession, agency_ids: Iterable[str]) -> dict[str, _Member]:
    """Status and current keys of the given agencies, in one statement."""
    stmt = _DIRECTORY_PG if is_postgres(db, Agency) else _DIRECTORY
    rows = await prepared(stmt, Agency).all(db, {"agency_ids": sorted(set(agency_ids))})
    out: dict[str, _Member] = {}
    for agency_id, status, use, kid, public_key in rows:
        member = out.setdefault(agency_id, _Member(status, {}))
        if use is not None:
            member.current[use] = (kid, public_key)
    return out


def _grant_row(referral_id: str, d: env.Disclosed, now: datetime) -> dict[str, Any]:
    g = d.value
    assert isinstance(g, GrantValue)  # noqa: S101 (grants come from the grant map)
    return {
        "referral_id": referral_id,
        "fid": g.fid,
        "recipient": g.recipient,
        "disclosure": d.disclosure,
        "kid": g.kid,
        "purpose": g.purpose,
        "expires_at": parse_time(g.expires_at) if g.expires_at else None,
        "created_at": now,
        "revoked_at": None,
    }


def _recipient_row(referral_id: str, d: env.Disclosed, now: datetime) -> dict[str, Any]:
    r = d.value
    assert isinstance(r, RequestValue)  # noqa: S101 (requests come from the request map)
    return {
        "referral_id": referral_id,
        "recipient": r.recipient,
        "received_at": now,
        "request": d.disclosure,
        "request_json": canonical_json(r.model_dump()).decode("utf-8"),
        "urgency": r.urgency,
        "status": vocab.TaskStatus.REQUESTED,
        "reason": None,
        "note": None,
        "signed_at": None,
        "signature": None,
        "updated_at": now,
    }


def _wrapped_rows(referral_id: str, wrapped: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "referral_id": referral_id,
            "fid": w.fid,
            "recipient": w.recipient,
            "kid": w.kid,
            "wrapped_key": w.wrapped_key,
        }
        for w in wrapped
    ]


def _text_array(name: str) -> BindParameter[Any]:
    return bindparam(name, type_=postgresql.ARRAY(Text))


# A new referral in one statement on PostgreSQL: the referral row (ON CONFLICT DO
# NOTHING, so an existing id inserts nothing anywhere and returns no row) and its
# fields, recipients, grants and wrapped keys from arrays. Foreign keys are checked
# at the end of the statement, when the referral row exists.
_PG_STORE = text(
    """
WITH r AS (
    INSERT INTO referral (id, sender_agency, sender_kid, created_at, received_at, version,
                          manifest_json, signature, withdrawn_at, purged_at)
    VALUES (:id, :sender_agency, :sender_kid, :created_at, :received_at, 1,
            :manifest_json, :signature, NULL, NULL)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), f AS (
    INSERT INTO referral_field (referral_id, fid, disclosure, ciphertext)
    SELECT r.id, u.fid, u.disclosure, u.ciphertext
    FROM r, unnest(CAST(:f_fid AS text[]), CAST(:f_disclosure AS text[]),
                   CAST(:f_ciphertext AS text[])) AS u(fid, disclosure, ciphertext)
), rr AS (
    INSERT INTO referral_recipient (referral_id, recipient, received_at, request, request_json,
                                    urgency, status, updated_at)
    SELECT r.id, u.recipient, :received_at, u.request, u.request_json, u.urgency, 'requested',
           :received_at
    FROM r, unnest(CAST(:r_recipient AS text[]), CAST(:r_request AS text[]),
                   CAST(:r_request_json AS text[]), CAST(:r_urgency AS text[]))
         AS u(recipient, request, request_json, urgency)
), g AS (
    INSERT INTO referral_grant (referral_id, fid, recipient, disclosure, kid, purpose,
                                expires_at, created_at, revoked_at)
    SELECT r.id, u.fid, u.recipient, u.disclosure, u.kid, u.purpose, u.expires_at,
           :received_at, NULL
    FROM r, unnest(CAST(:g_fid AS text[]), CAST(:g_recipient AS text[]),
                   CAST(:g_disclosure AS text[]), CAST(:g_kid AS text[]),
                   CAST(:g_purpose AS text[]), CAST(:g_expires_at AS timestamptz[]))
         AS u(fid, recipient, disclosure, kid, purpose, expires_at)
), w AS (
    INSERT INTO wrapped_key (referral_id, fid, recipient, kid, wrapped_key)
    SELECT r.id, u.fid, u.recipient, u.kid, u.wrapped_key
    FROM r, unnest(CAST(:w_fid AS text[]), CAST(:w_recipient AS text[]),
                   CAST(:w_kid AS text[]), CAST(:w_wrapped_key AS text[]))
         AS u(fid, recipient, kid, wrapped_key)
)
SELECT id FROM r
"""
).bindparams(
    bindparam("received_at", type_=UTCDateTime()),
    bindparam("g_expires_at", type_=postgresql.ARRAY(DateTime(timezone=True))),
    *(
        _text_array(name)
        for name in (
            "f_fid", "f_disclosure", "f_ciphertext",
            "r_recipient", "r_request", "r_request_json", "r_urgency",
            "g_fid", "g_recipient", "g_disclosure", "g_kid", "g_purpose",
            "w_fid", "w_recipient", "w_kid", "w_wrapped_key",
        )
    ),
)
_FIELD_COLS = ("fid", "disclosure", "ciphertext")
_RECIPIENT_COLS = ("recipient", "request", "request_json", "urgency")
_GRANT_COLS = ("fid", "recipient", "disclosure", "kid", "purpose", "expires_at")
_WRAPPED_COLS = ("fid", "recipient", "kid", "wrapped_key")


@dataclass(frozen=True)
class _Rows:
    referral: dict[str, Any]
    fields: list[dict[str, Any]]
    recipients: list[dict[str, Any]]
    grants: list[dict[str, Any]]
    wrapped: list[dict[str, Any]]


def _arrays(prefix: str, rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> dict[str, Any]:
    return {f"{prefix}_{c}": [r[c] for r in rows] for c in cols}


async def _store(db: AsyncSession, rows: _Rows) -> bool:
    """Insert a new referral and its rows; False (and nothing written) when its id exists.

    "Is it new?" and "store it" are one statement, so a concurrent duplicate waits
    for the first and then answers 409 instead of failing on the key. PostgreSQL
    writes all five tables in that statement (``_PG_STORE``); SQLite inserts the
    referral, then one executemany per table.
    """
    # the bind of the referral tables, not .bind: a session bound per table (binds=...)
    # has no .bind
    if is_postgres(db, Referral):
        stored = await prepared(_PG_STORE, Referral).scalar(
            db,
            {
                **rows.referral,
                **_arrays("f", rows.fields, _FIELD_COLS),
                **_arrays("r", rows.recipients, _RECIPIENT_COLS),
                **_arrays("g", rows.grants, _GRANT_COLS),
                **_arrays("w", rows.wrapped, _WRAPPED_COLS),
            },
        )
        return stored is not None
    table = table_of(Referral)
    stored = await db.scalar(
        sqlite.insert(table)
        .values(**rows.referral, version=1, withdrawn_at=None, purged_at=None)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(table.c.id)
    )
    if stored is None:
        return False
    await db.execute(insert(table_of(ReferralField)), rows.fields)
    await db.execute(insert(table_of(ReferralRecipient)), rows.recipients)
    await db.execute(insert(table_of(ReferralGrant)), rows.grants)
    await db.execute(insert(table_of(WrappedKey)), rows.wrapped)
    return True


_STATUS_COLUMNS = (
    col(ReferralRecipient.recipient),
    col(ReferralRecipient.status),
    col(ReferralRecipient.reason),
    col(ReferralRecipient.note),
    col(ReferralRecipient.signed_at),
    col(ReferralRecipient.signature),
    col(ReferralRecipient.updated_at),
)
_STATUSES = (
    select(col(ReferralRecipient.referral_id), *_STATUS_COLUMNS)
    .where(col(ReferralRecipient.referral_id).in_(bindparam("referral_ids", expanding=True)))
    .order_by(col(ReferralRecipient.recipient))
)


def _status_dict(
    recipient: str, status: str, reason: str | None, note: str | None,
    signed_at: str | None, signature: str | None, updated_at: datetime,
) -> dict[str, Any]:
    """A ``StatusOut`` as JSON, without building the model."""
    return {
        "recipient": recipient,
        "status": status,
        "reason": reason,
        "note": note,
        "signed_at": signed_at,
        "signature": signature,
        "updated_at": rfc3339(updated_at),
    }


async def _status_dicts(
    db: AsyncSession, referral_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Every recipient's status of each referral, by recipient, in their JSON form."""
    out: dict[str, list[dict[str, Any]]] = {r: [] for r in referral_ids}
    if referral_ids:
        conn = await core(db)
        for row in await conn.execute(_STATUSES, {"referral_ids": list(referral_ids)}):
            # the referral's id, then _STATUS_COLUMNS
            out[row[0]].append(_status_dict(*row[1:]))
    return out
