"""Referrals: store envelopes, enforce consent, run the closed-loop lifecycle.

The server holds no key: it checks an envelope's shape and signature
(``app.crypto.envelope.check_envelope``), that its grants name the recipients'
current keys, and that consents and wrapped keys match one to one; then it
stores the envelope in a handful of set-based statements. Reads go through
``app.authz``. Every action writes its audit event in the same transaction.

Statement budget of the hot paths (besides authentication and the audit
event): create reads the directory in one statement and writes the five
tables in one on PostgreSQL (one per table on SQLite); the referral's INSERT …
ON CONFLICT DO NOTHING is also the check that its id is new. An inbox page is
one statement (two for the sent box); a recipient's read is two; a status
change locks and reads in one and writes in one.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    DateTime,
    Text,
    and_,
    bindparam,
    delete,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from app import authz, errors
from app.auth import Principal
from app.authz import Access, Relation, relation
from app.config import Settings
from app.crypto import envelope as env
from app.crypto.canonical import canonical_json
from app.crypto.encoding import EncodingError, b64url_decode
from app.models.schemas import ReferralSummary, StatusOut, rfc3339
from app.models.tables import (
    Agency,
    AgencyKey,
    IdempotencyRecord,
    Referral,
    ReferralField,
    ReferralGrant,
    ReferralRecipient,
    WrappedKey,
)
from app.models.types import UTCDateTime, utcnow
from app.models.webhook_schemas import EventType
from app.services import audit, webhooks
from app.services.audit import Action

TERMINAL = frozenset({"rejected", "completed", "failed", "cancelled"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "requested": frozenset({"received", "accepted", "rejected"}),
    "received": frozenset({"accepted", "rejected"}),
    "accepted": frozenset({"in-progress", "completed", "failed"}),
    "in-progress": frozenset({"on-hold", "completed", "failed"}),
    "on-hold": frozenset({"in-progress", "completed", "failed"}),
}
MAX_NOTE_BYTES = 8192


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _invalid(exc: env.EnvelopeError) -> errors.Unprocessable:
    return errors.Unprocessable(exc.message, slug=f"envelope/{exc.code}")


def _not_found(who: Principal, action: Action, referral_id: str) -> errors.NotFound:
    """404 for a referral that is missing or not the caller's to see, recorded as denied."""
    return errors.NotFound(
        "no such referral",
        audit=audit.denied(who.actor, action, "referral", referral_id, {"reason": "not visible"}),
    )


# ---------------------------------------------------------------- create


@dataclass(frozen=True)
class _Member:
    """A directory entry as create and add_grants need it."""

    status: str
    current: dict[str, tuple[str, str]]  # use -> (kid, public key) of its current keys


_DIRECTORY = (
    select(Agency.id, Agency.status, AgencyKey.use, AgencyKey.kid, AgencyKey.public_key)
    .outerjoin(AgencyKey, and_(AgencyKey.agency_id == Agency.id, AgencyKey.status == "current"))
    .where(Agency.id.in_(bindparam("agency_ids", expanding=True)))
)


async def _directory(db: AsyncSession, agency_ids: Sequence[str]) -> dict[str, _Member]:
    """Status and current keys of the given agencies, in one statement."""
    rows = await db.execute(_DIRECTORY, {"agency_ids": sorted(set(agency_ids))})
    out: dict[str, _Member] = {}
    for agency_id, status, use, kid, public_key in rows:
        member = out.setdefault(agency_id, _Member(status, {}))
        if use is not None:
            member.current[use] = (kid, public_key)
    return out


def _sender_sig_key(directory: Mapping[str, _Member], agency_id: str) -> bytes:
    member = directory.get(agency_id)
    key = member.current.get("sig") if member is not None else None
    if key is None:
        raise errors.Unprocessable("the sender has no current signing key", slug="envelope/no-key")
    return b64url_decode(key[1], length=32)


def _check_recipients(recipients: Sequence[str], directory: Mapping[str, _Member]) -> None:
    for r in recipients:
        member = directory.get(r)
        if member is None:
            raise errors.Unprocessable(
                f"recipient {r} is unknown", slug="envelope/unknown-recipient"
            )
        if member.status != "active":
            raise errors.Unprocessable(
                f"recipient {r} is suspended", slug="envelope/suspended-recipient"
            )


def _check_grant_kids(
    grants: Sequence[Mapping[str, Any]], directory: Mapping[str, _Member]
) -> None:
    for g in grants:
        member = directory.get(g["recipient"])
        key = member.current.get("enc") if member is not None else None
        if key is None or key[0] != g["kid"]:
            raise errors.Unprocessable(
                f"grant ({g['field']}, {g['recipient']}) names kid {g['kid']}, which is not the "
                "recipient's current encryption key; refresh the directory and re-encrypt",
                slug="envelope/stale-kid",
            )


def _effective_expiry(g: Mapping[str, Any], now: datetime, settings: Settings) -> datetime | None:
    """A consent's expiry, capped at the configured maximum (DESIGN.md: 180 days)."""
    if g["expires_at"] is None:
        return None
    expires = parse_time(g["expires_at"])
    if expires <= now:
        raise errors.Unprocessable(
            f"consent ({g['field']}, {g['recipient']}) has already expired",
            slug="envelope/expired-consent",
        )
    return min(expires, now + timedelta(days=settings.referrals.max_consent_days))


def _grant_rows(
    referral_id: str, grants: Sequence[Mapping[str, Any]], now: datetime, settings: Settings
) -> list[dict[str, Any]]:
    return [
        {
            "referral_id": referral_id,
            "field": g["field"],
            "recipient": g["recipient"],
            "kid": g["kid"],
            "purpose": g["purpose"],
            "expires_at": _effective_expiry(g, now, settings),
            "release_ref": g["release_ref"],
            "wrapped_key_sha256": g["wrapped_key_sha256"],
            "created_at": now,
            "revoked_at": None,
        }
        for g in grants
    ]


def _wrapped_rows(referral_id: str, wrapped: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "referral_id": referral_id,
            "field": w["field"],
            "recipient": w["recipient"],
            "kid": w["kid"],
            "wrapped_key": w["wrapped_key"],
        }
        for w in wrapped
    ]


def _recipient_rows(
    referral_id: str, recipients: Sequence[str], now: datetime
) -> list[dict[str, Any]]:
    return [
        {
            "referral_id": referral_id,
            "recipient": r,
            "received_at": now,
            "status": "requested",
            "reason": None,
            "note": None,
            "updated_at": now,
        }
        for r in recipients
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
    INSERT INTO referral (id, sender_agency, sender_kid, created_at, received_at, urgency,
                          metadata_json, manifest_json, signature, withdrawn_at, purged_at)
    VALUES (:id, :sender_agency, :sender_kid, :created_at, :received_at, :urgency,
            :metadata_json, :manifest_json, :signature, NULL, NULL)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), f AS (
    INSERT INTO referral_field (referral_id, field, ciphertext)
    SELECT r.id, u.field, u.ciphertext
    FROM r, unnest(CAST(:f_field AS text[]), CAST(:f_ciphertext AS text[])) AS u(field, ciphertext)
), rr AS (
    INSERT INTO referral_recipient (referral_id, recipient, received_at, status, reason, note,
                                    updated_at)
    SELECT r.id, u.recipient, :received_at, 'requested', NULL, NULL, :received_at
    FROM r, unnest(CAST(:r_recipient AS text[])) AS u(recipient)
), g AS (
    INSERT INTO referral_grant (referral_id, field, recipient, kid, purpose, expires_at,
                                release_ref, wrapped_key_sha256, created_at, revoked_at)
    SELECT r.id, u.field, u.recipient, u.kid, u.purpose, u.expires_at, u.release_ref, u.sha,
           :received_at, NULL
    FROM r, unnest(CAST(:g_field AS text[]), CAST(:g_recipient AS text[]),
                   CAST(:g_kid AS text[]), CAST(:g_purpose AS text[]),
                   CAST(:g_expires_at AS timestamptz[]), CAST(:g_release_ref AS text[]),
                   CAST(:g_sha AS text[]))
         AS u(field, recipient, kid, purpose, expires_at, release_ref, sha)
), w AS (
    INSERT INTO wrapped_key (referral_id, field, recipient, kid, wrapped_key)
    SELECT r.id, u.field, u.recipient, u.kid, u.wrapped_key
    FROM r, unnest(CAST(:w_field AS text[]), CAST(:w_recipient AS text[]),
                   CAST(:w_kid AS text[]), CAST(:w_wrapped_key AS text[]))
         AS u(field, recipient, kid, wrapped_key)
)
SELECT id FROM r
"""
).bindparams(
    bindparam("created_at", type_=UTCDateTime()),
    bindparam("received_at", type_=UTCDateTime()),
    bindparam("g_expires_at", type_=postgresql.ARRAY(DateTime(timezone=True))),
    *(
        _text_array(name)
        for name in (
            "f_field",
            "f_ciphertext",
            "r_recipient",
            "g_field",
            "g_recipient",
            "g_kid",
            "g_purpose",
            "g_release_ref",
            "g_sha",
            "w_field",
            "w_recipient",
            "w_kid",
            "w_wrapped_key",
        )
    ),
)


async def _store(
    db: AsyncSession,
    referral: dict[str, Any],
    ciphertexts: Mapping[str, str],
    recipients: Sequence[str],
    grant_rows: Sequence[Mapping[str, Any]],
    wrapped_rows: Sequence[Mapping[str, Any]],
) -> bool:
    """Insert a new referral and its rows; False (and nothing written) when its id exists.

    "Is it new?" and "store it" are one statement, so a concurrent duplicate waits
    for the first and then answers 409 instead of failing on the key. PostgreSQL
    writes all five tables in that statement (``_PG_STORE``); SQLite inserts the
    referral, then one executemany per table.
    """
    if db.bind is not None and db.bind.dialect.name == "postgresql":
        stored = await db.scalar(
            _PG_STORE,
            {
                **referral,
                "f_field": list(ciphertexts),
                "f_ciphertext": list(ciphertexts.values()),
                "r_recipient": list(recipients),
                **{f"g_{k}": [g[k] for g in grant_rows] for k in _GRANT_ARRAYS},
                "g_sha": [g["wrapped_key_sha256"] for g in grant_rows],
                **{f"w_{k}": [w[k] for w in wrapped_rows] for k in _WRAPPED_ARRAYS},
            },
        )
        return stored is not None
    table = Referral.__table__
    stored = await db.scalar(
        sqlite.insert(table)
        .values(**referral, withdrawn_at=None, purged_at=None)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(table.c.id)
    )
    if stored is None:
        return False
    referral_id = referral["id"]
    now = referral["received_at"]
    await db.execute(
        insert(ReferralField.__table__),
        [{"referral_id": referral_id, "field": f, "ciphertext": c} for f, c in ciphertexts.items()],
    )
    await db.execute(
        insert(ReferralRecipient.__table__), _recipient_rows(referral_id, recipients, now)
    )
    await db.execute(insert(ReferralGrant.__table__), list(grant_rows))
    await db.execute(insert(WrappedKey.__table__), list(wrapped_rows))
    return True


_GRANT_ARRAYS = ("field", "recipient", "kid", "purpose", "expires_at", "release_ref")
_WRAPPED_ARRAYS = ("field", "recipient", "kid", "wrapped_key")


def _request_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


async def replay_idempotent(
    db: AsyncSession, who: Principal, key: str, body: Mapping[str, Any]
) -> tuple[int, dict[str, Any]] | None:
    record = await db.get(IdempotencyRecord, (who.client_id, key))
    if record is None:
        return None
    if record.request_sha256 != _request_hash(body):
        raise errors.Conflict(
            "this Idempotency-Key was used with a different request body",
            slug="idempotency-key-reused",
        )
    return record.status_code, json.loads(record.response_json)


async def create(
    db: AsyncSession,
    who: Principal,
    body: Mapping[str, Any],
    *,
    settings: Settings,
    idempotency_key: str | None,
) -> tuple[int, dict[str, Any]]:
    """Store a new referral; returns (status code, response body)."""
    if idempotency_key is not None:
        replayed = await replay_idempotent(db, who, idempotency_key, body)
        if replayed is not None:
            return replayed
    manifest = body.get("manifest")
    if not isinstance(manifest, dict):
        raise errors.Unprocessable("manifest must be an object", slug="envelope/malformed")
    sender = manifest.get("sender_agency")
    if sender != who.agency_id:
        raise errors.Forbidden(
            "manifest.sender_agency must be the caller's agency",
            slug="envelope/sender-mismatch",
            audit=audit.denied(
                who.actor,
                Action.REFERRAL_CREATE,
                "referral",
                str(manifest.get("referral_id")),
                {"reason": "sender_mismatch"},
            ),
        )
    recipients = manifest.get("recipients")
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise errors.Unprocessable(
            "manifest.recipients must be a list of ids", slug="envelope/malformed"
        )
    if len(recipients) > settings.referrals.max_recipients:
        raise errors.Unprocessable(
            f"at most {settings.referrals.max_recipients} recipients",
            slug="envelope/too-many-recipients",
        )
    directory = await _directory(db, [who.agency_id, *recipients])
    try:
        manifest_bytes = env.check_envelope(
            body,
            sender_sig_public=_sender_sig_key(directory, who.agency_id),
            max_fields=settings.referrals.max_fields,
            max_field_bytes=settings.referrals.max_field_bytes,
            max_recipients=settings.referrals.max_recipients,
        )
    except env.EnvelopeError as exc:
        raise _invalid(exc) from None
    _check_recipients(recipients, directory)
    grants: list[dict[str, Any]] = manifest["grants"]
    _check_grant_kids(grants, directory)
    now = utcnow()
    created_at = parse_time(manifest["created_at"])
    if abs((created_at - now).total_seconds()) > settings.referrals.max_clock_skew:
        raise errors.Unprocessable(
            "manifest.created_at is more than 5 minutes from the server's clock",
            slug="envelope/clock-skew",
        )
    referral_id: str = manifest["referral_id"]
    metadata: dict[str, Any] = manifest["metadata"]
    ciphertexts: dict[str, str] = body["ciphertexts"]
    referral_row = {
        "id": referral_id,
        "sender_agency": who.agency_id,
        "sender_kid": manifest["sender_kid"],
        "created_at": created_at,
        "received_at": now,
        "urgency": metadata.get("urgency"),
        "metadata_json": json.dumps(metadata, separators=(",", ":")),
        "manifest_json": manifest_bytes.decode("utf-8"),
        "signature": body["signature"],
    }
    stored = await _store(
        db,
        referral_row,
        ciphertexts,
        recipients,
        _grant_rows(referral_id, grants, now, settings),
        _wrapped_rows(referral_id, body["wrapped_keys"]),
    )
    if not stored:
        raise errors.Conflict("a referral with this referral_id exists", slug="referral-exists")
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_CREATE,
        "referral",
        referral_id,
        subject_agency=who.agency_id,
        detail={
            "recipients": list(recipients),
            "fields": sorted(ciphertexts),
            "grants": [
                {"field": g["field"], "recipient": g["recipient"], "purpose": g["purpose"]}
                for g in grants
                if g["recipient"] != who.agency_id
            ],
            "urgency": metadata.get("urgency"),
        },
    )
    await webhooks.enqueue(
        db,
        EventType.REFERRAL_RECEIVED,
        referral_id,
        {
            r: {"sender_agency": who.agency_id, "urgency": metadata.get("urgency")}
            for r in recipients
        },
    )
    statuses = [
        StatusOut(recipient=r, status="requested", updated_at=now).model_dump(mode="json")
        for r in recipients
    ]
    response = ReferralSummary(
        referral_id=referral_id,
        sender_agency=who.agency_id,
        created_at=created_at,
        metadata=metadata,
        statuses=statuses,
    ).model_dump(mode="json")
    if idempotency_key is not None:
        db.add(
            IdempotencyRecord(
                client_id=who.client_id,
                key=idempotency_key,
                request_sha256=_request_hash(body),
                status_code=201,
                response_json=json.dumps(response),
            )
        )
        await db.flush()
    return 201, response


# ---------------------------------------------------------------- list


def _encode_cursor(ts: datetime, referral_id: str) -> str:
    raw = f"{rfc3339(ts)}|{referral_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = b64url_decode(cursor).decode()
        ts, referral_id = raw.split("|", 1)
        return parse_time(ts), referral_id
    except (EncodingError, ValueError, UnicodeDecodeError):
        raise errors.BadRequest("cursor is not valid", slug="invalid-cursor") from None


_STATUSES = (
    select(
        ReferralRecipient.referral_id,
        ReferralRecipient.recipient,
        ReferralRecipient.status,
        ReferralRecipient.reason,
        ReferralRecipient.note,
        ReferralRecipient.updated_at,
    )
    .where(ReferralRecipient.referral_id.in_(bindparam("referral_ids", expanding=True)))
    .order_by(ReferralRecipient.recipient)
)


async def _statuses(db: AsyncSession, referral_ids: Sequence[str]) -> dict[str, list[StatusOut]]:
    """Every recipient's status of each referral, by recipient."""
    out: dict[str, list[StatusOut]] = {r: [] for r in referral_ids}
    if referral_ids:
        for referral_id, *status in await db.execute(
            _STATUSES, {"referral_ids": list(referral_ids)}
        ):
            out[referral_id].append(_status_out(*status))
    return out


async def _status_dicts(
    db: AsyncSession, referral_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """``_statuses`` in their JSON form."""
    out: dict[str, list[dict[str, Any]]] = {r: [] for r in referral_ids}
    if referral_ids:
        for referral_id, *status in await db.execute(
            _STATUSES, {"referral_ids": list(referral_ids)}
        ):
            out[referral_id].append(_status_dict(*status))
    return out


def _status_dict(
    recipient: str, status: str, reason: str | None, note: str | None, updated_at: datetime
) -> dict[str, Any]:
    """A ``StatusOut`` as JSON, without building the model."""
    return {
        "recipient": recipient,
        "status": status,
        "reason": reason,
        "note": note,
        "updated_at": rfc3339(updated_at),
    }


def _status_out(
    recipient: str, status: str, reason: str | None, note: str | None, updated_at: datetime
) -> StatusOut:
    return StatusOut(
        recipient=recipient, status=status, reason=reason, note=note, updated_at=updated_at
    )


@cache
def _page_query(
    box: str, law_enforcement: bool, urgency: bool, since: bool, status: bool, cursor: bool
) -> Select[Any]:
    """An inbox page statement for one combination of filters, built once.

    Parameters: those of ``authz.visible_referrals`` and ``:urgency``, ``:since``,
    ``:status_filter``, ``:after_ts`` and ``:after_id`` for the filters present.
    """
    stmt = authz.visible_referrals(box, law_enforcement)
    received_at = stmt.selected_columns.received_at
    # The received box is driven from the caller's referral_recipient rows: key on them.
    key = Referral.id if box == "sent" else ReferralRecipient.referral_id
    if urgency:
        stmt = stmt.where(Referral.urgency == bindparam("urgency"))
    if since:
        stmt = stmt.where(received_at >= bindparam("since", type_=UTCDateTime()))
    if status:
        wanted: BindParameter[str] = bindparam("status_filter")
        if box == "received":
            stmt = stmt.where(ReferralRecipient.status == wanted)
        else:
            stmt = stmt.where(
                select(ReferralRecipient.referral_id)
                .where(
                    ReferralRecipient.referral_id == Referral.id,
                    ReferralRecipient.status == wanted,
                )
                .exists()
            )
    if cursor:
        after = tuple_(bindparam("after_ts", type_=UTCDateTime()), bindparam("after_id"))
        stmt = stmt.where(tuple_(received_at, key) < after)
    return stmt.order_by(received_at.desc(), key.desc())


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


async def list_page(
    db: AsyncSession,
    who: Principal,
    *,
    box: str,
    status: str | None,
    urgency: str | None,
    since: datetime | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[str], str | None]:
    """One page of the caller's sent or received box, newest first.

    Items are ``ReferralSummary`` objects as JSON text, built directly from the
    rows (a page is up to 200 of them).
    """
    values = authz.params(who, utcnow())
    if cursor:
        values["after_ts"], values["after_id"] = _decode_cursor(cursor)
    if urgency:
        values["urgency"] = urgency
    if since:
        values["since"] = since
    if status:
        values["status_filter"] = status
    stmt = _page_query(
        box,
        who.agency_kind == authz.LAW_ENFORCEMENT,
        bool(urgency),
        bool(since),
        bool(status),
        bool(cursor),
    )
    rows = (await db.execute(stmt.limit(limit + 1), values)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    if box == "sent":
        statuses = await _status_dicts(db, [r.id for r in rows])
    else:  # the caller's own row came with each item
        statuses = {
            r.id: [_status_dict(who.agency_id, r.status, r.reason, r.note, r.updated_at)]
            for r in rows
        }
    items = [
        # the stored metadata is JSON we wrote: spliced in as it is, not parsed and re-encoded
        _ENCODE(
            {
                "referral_id": r.id,
                "sender_agency": r.sender_agency,
                "created_at": rfc3339(r.created_at),
                "statuses": statuses[r.id],
                "withdrawn": r.withdrawn_at is not None,
            }
        )[:-1]
        + ',"metadata":'
        + r.metadata_json
        + "}"
        for r in rows
    ]
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_LIST,
        "referral",
        None,
        detail={"box": box, "count": len(items)},
    )
    next_cursor = _encode_cursor(rows[-1].received_at, rows[-1].id) if more else None
    return items, next_cursor


# ---------------------------------------------------------------- read


async def _require(
    db: AsyncSession,
    who: Principal,
    referral_id: str,
    action: Action,
    *,
    content: bool = False,
    lock_own: bool = False,
) -> Access:
    access = await relation(db, who, referral_id, utcnow(), content=content, lock_own=lock_own)
    if access is None:
        raise _not_found(who, action, referral_id)
    return access


async def read(db: AsyncSession, who: Principal, referral_id: str) -> str:
    """The envelope filtered to what the caller may see, plus statuses, as JSON text."""
    access = await _require(db, who, referral_id, Action.REFERRAL_READ, content=True)
    referral = access.referral
    if access.relation is Relation.RECIPIENT:
        # relation() brought each active grant's ciphertext and the caller's wrapped key.
        ciphertexts = {
            f: g.ciphertext for f, g in access.fields.items() if g.ciphertext is not None
        }
        wrapped = [
            {"field": f, "recipient": who.agency_id, "kid": g.kid, "wrapped_key": g.wrapped_key}
            for f, g in access.fields.items()
            if g.wrapped_key is not None
        ]
        own = access.own
        statuses = (
            [_status_dict(who.agency_id, own.status, own.reason, own.note, own.updated_at)]
            if own is not None
            else []
        )
    else:
        ciphertexts = {
            f: c
            for f, c in await db.execute(
                select(ReferralField.field, ReferralField.ciphertext)
                .where(ReferralField.referral_id == referral_id)
                .order_by(ReferralField.field)
            )
        }
        wrapped = [
            {"field": f, "recipient": r, "kid": k, "wrapped_key": w}
            for f, r, k, w in await db.execute(
                select(
                    WrappedKey.field, WrappedKey.recipient, WrappedKey.kid, WrappedKey.wrapped_key
                )
                .where(WrappedKey.referral_id == referral_id)
                .order_by(WrappedKey.field, WrappedKey.recipient)
            )
        ]
        statuses = (await _status_dicts(db, [referral_id]))[referral_id]
    grant_detail = {
        f: {"purpose": g.purpose, "expires_at": rfc3339(g.expires_at) if g.expires_at else None}
        for f, g in sorted(access.fields.items())
    }
    purposes = sorted({g.purpose for g in access.fields.values()})
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_READ,
        "referral",
        referral_id,
        subject_agency=referral.sender_agency,
        grant=grant_detail if access.relation is Relation.RECIPIENT else None,
        purpose=",".join(purposes) if purposes else None,
        detail={"relation": str(access.relation), "fields": sorted(ciphertexts)},
    )
    if referral.manifest_json is None:
        raise RuntimeError("relation(content=True) reads the manifest")
    rest = _ENCODE(
        {
            "signature": referral.signature,
            "ciphertexts": ciphertexts,
            "wrapped_keys": wrapped,
            "statuses": statuses,
        }
    )
    # the stored manifest is the RFC 8785 text the signature covers: spliced in as it is
    return '{"manifest":' + referral.manifest_json + "," + rest[1:]


# ---------------------------------------------------------------- lifecycle


# (an UPDATE reserves bind names equal to its table's columns: hence "row_*")
_OWN_ROW = and_(
    ReferralRecipient.referral_id == bindparam("row_referral_id"),
    ReferralRecipient.recipient == bindparam("row_recipient"),
)
_SET_NOTE = (
    update(ReferralRecipient)
    .where(_OWN_ROW)
    .values(
        note=bindparam("new_note"),
        updated_at=bindparam("new_updated_at", type_=UTCDateTime()),
    )
)
_SET_STATUS = (
    update(ReferralRecipient)
    .where(_OWN_ROW)
    .values(
        status=bindparam("new_status"),
        reason=bindparam("new_reason"),
        note=bindparam("new_note"),
        updated_at=bindparam("new_updated_at", type_=UTCDateTime()),
    )
)


async def update_status(
    db: AsyncSession,
    who: Principal,
    referral_id: str,
    *,
    status: str,
    reason: str | None,
    note: str | None,
) -> StatusOut:
    access = await _require(db, who, referral_id, Action.REFERRAL_STATUS, lock_own=True)
    if access.relation is not Relation.RECIPIENT:
        raise errors.Forbidden(
            "only a recipient posts status; the sender withdraws",
            slug="not-a-recipient",
            audit=audit.denied(
                who.actor,
                Action.REFERRAL_STATUS,
                "referral",
                referral_id,
                {"reason": "sender cannot post recipient status"},
                subject_agency=access.referral.sender_agency,
            ),
        )
    if note is not None:
        try:
            if len(b64url_decode(note)) > MAX_NOTE_BYTES:
                raise errors.Unprocessable(
                    f"note is limited to {MAX_NOTE_BYTES} bytes", slug="invalid-note"
                )
        except EncodingError:
            raise errors.Unprocessable(
                "note must be base64url of a sealed box", slug="invalid-note"
            ) from None
    row = access.own  # locked by relation(lock_own=True) until the transaction ends
    if row is None:  # a recipient always has its row
        raise _not_found(who, Action.REFERRAL_STATUS, referral_id)
    own_row = {"row_referral_id": referral_id, "row_recipient": who.agency_id}
    if status == row.status and reason == row.reason:
        # Idempotent: the same status again changes nothing, except a new note.
        note_changed = note is not None and note != row.note
        updated_at = row.updated_at
        if note_changed:
            updated_at = utcnow()
            await db.execute(_SET_NOTE, {**own_row, "new_note": note, "new_updated_at": updated_at})
        await audit.record(
            db,
            who.actor,
            Action.REFERRAL_STATUS,
            "referral",
            referral_id,
            subject_agency=access.referral.sender_agency,
            detail={
                "from": status,
                "to": status,
                "unchanged": not note_changed,
                "note": note_changed,
            },
        )
        return _status_out(
            who.agency_id, status, reason, note if note_changed else row.note, updated_at
        )
    if status == "cancelled":
        raise errors.Conflict("only the sender cancels, by withdrawing", slug="invalid-transition")
    if status not in TRANSITIONS.get(row.status, frozenset()):
        raise errors.Conflict(
            f"a referral that is {row.status} cannot become {status}", slug="invalid-transition"
        )
    if status == "rejected" and not reason:
        raise errors.Unprocessable("rejected needs a reason code", slug="reason-required")
    previous = row.status
    updated_at = utcnow()
    await db.execute(
        _SET_STATUS,
        {
            **own_row,
            "new_status": status,
            "new_reason": reason,
            "new_note": note,
            "new_updated_at": updated_at,
        },
    )
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_STATUS,
        "referral",
        referral_id,
        subject_agency=access.referral.sender_agency,
        detail={"from": previous, "to": status, "reason": reason, "note": note is not None},
    )
    await webhooks.enqueue(
        db,
        EventType.REFERRAL_STATUS_CHANGED,
        referral_id,
        {
            access.referral.sender_agency: {
                "recipient": who.agency_id,
                "status": status,
                "previous_status": previous,
                "reason": reason,
            }
        },
    )
    return _status_out(who.agency_id, status, reason, note, updated_at)


async def _require_sender(
    db: AsyncSession, who: Principal, referral_id: str, action: Action
) -> Referral:
    access = await _require(db, who, referral_id, action)
    if access.relation is not Relation.SENDER:
        raise errors.Forbidden(
            "only the sending agency may do this",
            slug="not-the-sender",
            audit=audit.denied(
                who.actor,
                action,
                "referral",
                referral_id,
                {"reason": "not the sender"},
                subject_agency=access.referral.sender_agency,
            ),
        )
    referral = await db.get(Referral, referral_id)
    if referral is None:  # cannot happen: relation() just read it, and referrals are not deleted
        raise _not_found(who, action, referral_id)
    return referral


async def withdraw(db: AsyncSession, who: Principal, referral_id: str) -> list[StatusOut]:
    referral = await _require_sender(db, who, referral_id, Action.REFERRAL_WITHDRAW)
    now = utcnow()
    first = referral.withdrawn_at is None
    if first:
        referral.withdrawn_at = now
        await db.execute(
            update(ReferralRecipient)
            .where(ReferralRecipient.referral_id == referral_id)
            .values(status="cancelled", updated_at=now)
        )
        await db.flush()
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_WITHDRAW,
        "referral",
        referral_id,
        subject_agency=who.agency_id,
        detail={"unchanged": not first},
    )
    statuses = (await _statuses(db, [referral_id]))[referral_id]
    if first:
        await webhooks.enqueue(
            db,
            EventType.REFERRAL_CANCELLED,
            referral_id,
            {s.recipient: {"sender_agency": who.agency_id} for s in statuses},
        )
    return statuses


async def add_grants(
    db: AsyncSession,
    who: Principal,
    referral_id: str,
    body: Mapping[str, Any],
    *,
    settings: Settings,
) -> list[dict[str, Any]]:
    referral = await _require_sender(db, who, referral_id, Action.GRANT_ADD)
    if referral.withdrawn_at is not None:
        raise errors.Conflict("the referral was withdrawn", slug="referral-withdrawn")
    old_manifest = json.loads(referral.manifest_json)
    new_manifest = body.get("manifest") if isinstance(body, Mapping) else None
    recipients = new_manifest.get("recipients") if isinstance(new_manifest, dict) else None
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise errors.Unprocessable(
            "manifest.recipients must be a list of ids", slug="envelope/malformed"
        )
    directory = await _directory(db, [who.agency_id, *recipients])
    try:
        changed = env.check_grant_update(
            old_manifest, body, sender_sig_public=_sender_sig_key(directory, who.agency_id)
        )
    except env.EnvelopeError as exc:
        raise _invalid(exc) from None
    added = [r for r in recipients if r not in old_manifest["recipients"]]
    _check_recipients(added, directory)
    _check_recipients(
        [g["recipient"] for g in changed if g["recipient"] != who.agency_id], directory
    )
    _check_grant_kids(changed, directory)
    now = utcnow()
    pairs = [(g["field"], g["recipient"]) for g in changed]
    pair_in = tuple_(ReferralGrant.field, ReferralGrant.recipient).in_(pairs)
    await db.execute(delete(ReferralGrant).where(ReferralGrant.referral_id == referral_id, pair_in))
    await db.execute(
        delete(WrappedKey).where(
            WrappedKey.referral_id == referral_id,
            tuple_(WrappedKey.field, WrappedKey.recipient).in_(pairs),
        )
    )
    await db.execute(
        insert(ReferralGrant.__table__), _grant_rows(referral_id, changed, now, settings)
    )
    await db.execute(insert(WrappedKey.__table__), _wrapped_rows(referral_id, body["wrapped_keys"]))
    if added:
        await db.execute(
            insert(ReferralRecipient.__table__), _recipient_rows(referral_id, added, now)
        )
    referral.manifest_json = canonical_json(new_manifest).decode("utf-8")
    referral.signature = body["signature"]
    await db.flush()
    await audit.record(
        db,
        who.actor,
        Action.GRANT_ADD,
        "referral",
        referral_id,
        subject_agency=who.agency_id,
        detail={
            "grants": [
                {"field": g["field"], "recipient": g["recipient"], "purpose": g["purpose"]}
                for g in changed
            ],
            "new_recipients": added,
        },
    )
    await webhooks.enqueue(
        db,
        EventType.GRANT_ADDED,
        referral_id,
        {
            r: {
                "sender_agency": who.agency_id,
                "fields": sorted(g["field"] for g in changed if g["recipient"] == r),
            }
            for r in {g["recipient"] for g in changed} - {who.agency_id}
        },
    )
    return changed


async def revoke(
    db: AsyncSession, who: Principal, referral_id: str, pairs: Sequence[tuple[str, str]]
) -> datetime:
    await _require_sender(db, who, referral_id, Action.CONSENT_REVOKE)
    unique = sorted(set(pairs))
    if any(recipient == who.agency_id for _, recipient in unique):
        raise errors.Unprocessable(
            "the sender's own copies cannot be revoked; withdraw the referral instead",
            slug="cannot-revoke-sender",
        )
    found = {
        (f, r)
        for f, r in await db.execute(
            select(ReferralGrant.field, ReferralGrant.recipient).where(
                ReferralGrant.referral_id == referral_id,
                tuple_(ReferralGrant.field, ReferralGrant.recipient).in_(unique),
            )
        )
    }
    missing = [p for p in unique if p not in found]
    if missing:
        raise errors.Unprocessable(
            f"no consent for field {missing[0][0]!r} to {missing[0][1]}", slug="unknown-grant"
        )
    now = utcnow()
    await db.execute(
        delete(WrappedKey).where(
            WrappedKey.referral_id == referral_id,
            tuple_(WrappedKey.field, WrappedKey.recipient).in_(unique),
        )
    )
    await db.execute(
        update(ReferralGrant)
        .where(
            ReferralGrant.referral_id == referral_id,
            tuple_(ReferralGrant.field, ReferralGrant.recipient).in_(unique),
            ReferralGrant.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )
    await audit.record(
        db,
        who.actor,
        Action.CONSENT_REVOKE,
        "referral",
        referral_id,
        subject_agency=who.agency_id,
        detail={"revocations": [{"field": f, "recipient": r} for f, r in unique]},
    )
    await webhooks.enqueue(
        db,
        EventType.CONSENT_REVOKED,
        referral_id,
        {
            r: {"sender_agency": who.agency_id, "fields": sorted(f for f, rr in unique if rr == r)}
            for r in {r for _, r in unique}
        },
        visible_only=False,
    )
    return now
