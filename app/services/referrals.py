"""Referrals: store envelopes, enforce consent, run the closed-loop lifecycle.

The server holds no key: it checks an envelope's shape and signature
(``app.crypto.envelope.check_envelope``), that its grants name the recipients'
current keys, and that consents and wrapped keys match one to one; then it
stores the envelope in a handful of set-based statements. Reads go through
``app.authz``. Every action writes its audit event in the same transaction.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import errors
from app.auth import Principal
from app.authz import Access, Relation, relation, visible_referrals
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
from app.models.types import utcnow
from app.models.webhook_schemas import EventType
from app.services import audit, webhooks
from app.services.audit import Action, Outcome, PendingEvent

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
        audit=PendingEvent(
            actor=who.actor,
            action=action,
            resource_type="referral",
            resource_id=referral_id[:128],
            outcome=Outcome.DENIED,
            detail={"reason": "not visible"},
        ),
    )


# ---------------------------------------------------------------- create


async def _directory(
    db: AsyncSession, agency_ids: Sequence[str]
) -> tuple[dict[str, Agency], dict[tuple[str, str], AgencyKey]]:
    agencies = {a.id: a for a in await db.scalars(select(Agency).where(Agency.id.in_(agency_ids)))}
    current = {
        (k.agency_id, k.use): k
        for k in await db.scalars(
            select(AgencyKey).where(
                AgencyKey.agency_id.in_(agency_ids),
                AgencyKey.status == "current",
            )
        )
    }
    return agencies, current


def _sender_sig_key(current: Mapping[tuple[str, str], AgencyKey], agency_id: str) -> bytes:
    key = current.get((agency_id, "sig"))
    if key is None:
        raise errors.Unprocessable("the sender has no current signing key", slug="envelope/no-key")
    return b64url_decode(key.public_key, length=32)


def _check_recipients(recipients: Sequence[str], agencies: Mapping[str, Agency]) -> None:
    for r in recipients:
        agency = agencies.get(r)
        if agency is None:
            raise errors.Unprocessable(
                f"recipient {r} is unknown", slug="envelope/unknown-recipient"
            )
        if agency.status != "active":
            raise errors.Unprocessable(
                f"recipient {r} is suspended", slug="envelope/suspended-recipient"
            )


def _check_grant_kids(
    grants: Sequence[Mapping[str, Any]], current: Mapping[tuple[str, str], AgencyKey]
) -> None:
    for g in grants:
        key = current.get((g["recipient"], "enc"))
        if key is None or key.kid != g["kid"]:
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
            audit=PendingEvent(
                actor=who.actor,
                action=Action.REFERRAL_CREATE,
                resource_type="referral",
                resource_id=str(manifest.get("referral_id"))[:128],
                outcome=Outcome.DENIED,
                detail={"reason": "sender_mismatch"},
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
    agencies, current = await _directory(db, [who.agency_id, *recipients])
    try:
        env.check_envelope(
            body,
            sender_sig_public=_sender_sig_key(current, who.agency_id),
            max_fields=settings.referrals.max_fields,
            max_field_bytes=settings.referrals.max_field_bytes,
            max_recipients=settings.referrals.max_recipients,
        )
    except env.EnvelopeError as exc:
        raise _invalid(exc) from None
    _check_recipients(recipients, agencies)
    grants: list[dict[str, Any]] = manifest["grants"]
    _check_grant_kids(grants, current)
    now = utcnow()
    created_at = parse_time(manifest["created_at"])
    if abs((created_at - now).total_seconds()) > settings.referrals.max_clock_skew:
        raise errors.Unprocessable(
            "manifest.created_at is more than 5 minutes from the server's clock",
            slug="envelope/clock-skew",
        )
    referral_id: str = manifest["referral_id"]
    if await db.get(Referral, referral_id) is not None:
        raise errors.Conflict("a referral with this referral_id exists", slug="referral-exists")

    metadata: dict[str, Any] = manifest["metadata"]
    await db.execute(
        insert(Referral.__table__),
        [
            {
                "id": referral_id,
                "sender_agency": who.agency_id,
                "sender_kid": manifest["sender_kid"],
                "created_at": created_at,
                "received_at": now,
                "urgency": metadata.get("urgency"),
                "metadata_json": json.dumps(metadata, separators=(",", ":")),
                "manifest_json": canonical_json(manifest).decode("utf-8"),
                "signature": body["signature"],
                "withdrawn_at": None,
                "purged_at": None,
            }
        ],
    )
    ciphertexts: dict[str, str] = body["ciphertexts"]
    await db.execute(
        insert(ReferralField.__table__),
        [{"referral_id": referral_id, "field": f, "ciphertext": c} for f, c in ciphertexts.items()],
    )
    await db.execute(
        insert(ReferralRecipient.__table__), _recipient_rows(referral_id, recipients, now)
    )
    await db.execute(
        insert(ReferralGrant.__table__), _grant_rows(referral_id, grants, now, settings)
    )
    await db.execute(insert(WrappedKey.__table__), _wrapped_rows(referral_id, body["wrapped_keys"]))
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


async def _statuses(
    db: AsyncSession, referral_ids: Sequence[str], only: str | None
) -> dict[str, list[StatusOut]]:
    out: dict[str, list[StatusOut]] = {r: [] for r in referral_ids}
    if not referral_ids:
        return out
    stmt = select(ReferralRecipient).where(ReferralRecipient.referral_id.in_(referral_ids))
    if only is not None:
        stmt = stmt.where(ReferralRecipient.recipient == only)
    for row in await db.scalars(stmt.order_by(ReferralRecipient.recipient)):
        out[row.referral_id].append(_status_out(row))
    return out


def _status_out(row: ReferralRecipient) -> StatusOut:
    return StatusOut(
        recipient=row.recipient,
        status=row.status,
        reason=row.reason,
        note=row.note,
        updated_at=row.updated_at,
    )


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
) -> tuple[list[ReferralSummary], str | None]:
    now = utcnow()
    stmt = visible_referrals(who, box, now)
    if urgency:
        stmt = stmt.where(Referral.urgency == urgency)
    if since:
        stmt = stmt.where(Referral.received_at >= since)
    if status:
        status_match = select(ReferralRecipient.referral_id).where(
            ReferralRecipient.referral_id == Referral.id,
            ReferralRecipient.status == status,
        )
        if box == "received":
            status_match = status_match.where(ReferralRecipient.recipient == who.agency_id)
        stmt = stmt.where(status_match.exists())
    if cursor:
        ts, last_id = _decode_cursor(cursor)
        stmt = stmt.where(tuple_(Referral.received_at, Referral.id) < tuple_(ts, last_id))
    stmt = stmt.order_by(Referral.received_at.desc(), Referral.id.desc()).limit(limit + 1)
    rows = list((await db.scalars(stmt)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    statuses = await _statuses(db, [r.id for r in rows], None if box == "sent" else who.agency_id)
    items = [
        ReferralSummary(
            referral_id=r.id,
            sender_agency=r.sender_agency,
            created_at=r.created_at,
            metadata=json.loads(r.metadata_json),
            statuses=statuses[r.id],
            withdrawn=r.withdrawn_at is not None,
        )
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


async def _require(db: AsyncSession, who: Principal, referral_id: str, action: Action) -> Access:
    access = await relation(db, who, referral_id, utcnow())
    if access is None:
        raise _not_found(who, action, referral_id)
    return access


async def read(db: AsyncSession, who: Principal, referral_id: str) -> dict[str, Any]:
    """The envelope filtered to what the caller may see, plus statuses."""
    access = await _require(db, who, referral_id, Action.REFERRAL_READ)
    referral = access.referral
    fields_q = select(ReferralField.field, ReferralField.ciphertext).where(
        ReferralField.referral_id == referral_id
    )
    keys_q = select(WrappedKey).where(WrappedKey.referral_id == referral_id)
    if access.relation is Relation.RECIPIENT:
        readable = sorted(access.fields)
        fields_q = fields_q.where(ReferralField.field.in_(readable))
        keys_q = keys_q.where(
            WrappedKey.recipient == who.agency_id,
            WrappedKey.field.in_(readable),
        )
    ciphertexts = {f: c for f, c in (await db.execute(fields_q)).all()}
    wrapped = [
        {"field": w.field, "recipient": w.recipient, "kid": w.kid, "wrapped_key": w.wrapped_key}
        for w in await db.scalars(keys_q.order_by(WrappedKey.field, WrappedKey.recipient))
    ]
    only = None if access.relation is Relation.SENDER else who.agency_id
    statuses = (await _statuses(db, [referral_id], only))[referral_id]
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
    return {
        "manifest": json.loads(referral.manifest_json),
        "signature": referral.signature,
        "ciphertexts": ciphertexts,
        "wrapped_keys": wrapped,
        "statuses": [s.model_dump(mode="json") for s in statuses],
    }


# ---------------------------------------------------------------- lifecycle


async def update_status(
    db: AsyncSession,
    who: Principal,
    referral_id: str,
    *,
    status: str,
    reason: str | None,
    note: str | None,
) -> StatusOut:
    access = await _require(db, who, referral_id, Action.REFERRAL_STATUS)
    if access.relation is not Relation.RECIPIENT:
        raise errors.Forbidden(
            "only a recipient posts status; the sender withdraws",
            slug="not-a-recipient",
            audit=PendingEvent(
                actor=who.actor,
                action=Action.REFERRAL_STATUS,
                resource_type="referral",
                resource_id=referral_id,
                outcome=Outcome.DENIED,
                subject_agency=access.referral.sender_agency,
                detail={"reason": "sender cannot post recipient status"},
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
    row = await db.get(ReferralRecipient, (referral_id, who.agency_id), with_for_update=True)
    if row is None:  # deleted between relation() and here
        raise _not_found(who, Action.REFERRAL_STATUS, referral_id)
    if status == row.status and reason == row.reason:
        # Idempotent: the same status again changes nothing, except a new note.
        note_changed = note is not None and note != row.note
        if note_changed:
            row.note, row.updated_at = note, utcnow()
            await db.flush()
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
        return _status_out(row)
    if status == "cancelled":
        raise errors.Conflict("only the sender cancels, by withdrawing", slug="invalid-transition")
    if status not in TRANSITIONS.get(row.status, frozenset()):
        raise errors.Conflict(
            f"a referral that is {row.status} cannot become {status}", slug="invalid-transition"
        )
    if status == "rejected" and not reason:
        raise errors.Unprocessable("rejected needs a reason code", slug="reason-required")
    previous = row.status
    row.status, row.reason, row.note, row.updated_at = status, reason, note, utcnow()
    await db.flush()
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
    return _status_out(row)


async def _require_sender(
    db: AsyncSession, who: Principal, referral_id: str, action: Action
) -> Referral:
    access = await _require(db, who, referral_id, action)
    if access.relation is not Relation.SENDER:
        raise errors.Forbidden(
            "only the sending agency may do this",
            slug="not-the-sender",
            audit=PendingEvent(
                actor=who.actor,
                action=action,
                resource_type="referral",
                resource_id=referral_id,
                outcome=Outcome.DENIED,
                subject_agency=access.referral.sender_agency,
                detail={"reason": "not the sender"},
            ),
        )
    return access.referral


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
    statuses = (await _statuses(db, [referral_id], None))[referral_id]
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
    agencies, current = await _directory(db, [who.agency_id, *recipients])
    try:
        changed = env.check_grant_update(
            old_manifest, body, sender_sig_public=_sender_sig_key(current, who.agency_id)
        )
    except env.EnvelopeError as exc:
        raise _invalid(exc) from None
    added = [r for r in recipients if r not in old_manifest["recipients"]]
    _check_recipients(added, agencies)
    _check_recipients(
        [g["recipient"] for g in changed if g["recipient"] != who.agency_id], agencies
    )
    _check_grant_kids(changed, current)
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
