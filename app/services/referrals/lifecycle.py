"""The closed loop: a recipient's signed status changes (``vocab.TRANSITIONS``) and the
sender's withdrawal."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import and_, bindparam, delete, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import errors, vocab
from app.authz import Access, OwnStatus, Relation
from app.config import Settings
from app.crypto import envelope as env
from app.crypto.encoding import EncodingError, b64url_decode
from app.crypto.wire import StatusIn
from app.db import prepared
from app.identity import Principal
from app.models.schemas import StatusOut, rfc3339
from app.models.tables import ReferralRecipient, WrappedKey
from app.models.types import UTCDateTime, utcnow
from app.models.webhook_schemas import EventType
from app.services import audit, webhooks
from app.services.audit import Action
from app.services.referrals.checks import _sig_key
from app.services.referrals.common import (
    TRANSITIONS,
    _not_found,
    _require,
    _require_sender,
    _validated,
    parse_time,
)
from app.services.referrals.store import _directory, _status_dicts

MAX_NOTE_BYTES = 8192

# (an UPDATE reserves bind names equal to its table's columns: hence "new_*"/"row_*")
_OWN_ROW = and_(
    col(ReferralRecipient.referral_id) == bindparam("row_referral_id"),
    col(ReferralRecipient.recipient) == bindparam("row_recipient"),
)
_SET_STATUS = (
    update(ReferralRecipient)
    .where(_OWN_ROW)
    .values(
        status=bindparam("new_status"),
        reason=bindparam("new_reason"),
        note=bindparam("new_note"),
        signed_at=bindparam("new_signed_at"),
        signature=bindparam("new_signature"),
        updated_at=bindparam("new_updated_at", type_=UTCDateTime()),
    )
)


def _check_note(note: str | None) -> None:
    if note is None:
        return
    try:
        if len(b64url_decode(note)) > MAX_NOTE_BYTES + 48:
            raise errors.Unprocessable(
                f"note is limited to {MAX_NOTE_BYTES} bytes", slug="invalid-note"
            )
    except EncodingError:
        raise errors.Unprocessable(
            "note must be base64url of a sealed box", slug="invalid-note"
        ) from None


async def update_status(
    db: AsyncSession,
    who: Principal,
    referral_id: str,
    raw: Mapping[str, Any],
    *,
    settings: Settings,
) -> StatusOut:
    """Store a recipient's signed status change (verified with its current signing key).

    The steps: the caller must be a recipient (its row locked until the transaction
    ends); the note, the signature and its time are checked; a new status must be a
    transition (the same status again changes nothing, except a new note); the row
    is written when something changed; the event is recorded and, for a new status,
    the sender told.
    """
    body: StatusIn = _validated(StatusIn, raw)
    access = await _require_recipient(db, who, referral_id)
    _check_note(body.note)
    await _verify_signature(db, who, referral_id, body)
    now = utcnow()
    _check_signed_at(body.signed_at, now, settings)
    row = access.own  # locked by relation(lock_own=True) until the transaction ends
    if row is None:  # a recipient always has its row
        raise await _not_found(db, who, Action.REFERRAL_STATUS, referral_id)
    same = body.status == row.status and body.reason == row.reason
    if not same:
        _check_transition(row, body)
    # Idempotent: the same status again changes nothing, except a new note.
    changed = not same or (body.note is not None and body.note != row.note)
    if changed:
        await _write_status(db, who, referral_id, body, now)
    sender = access.referral.sender_agency
    await _record_status(db, who, referral_id, sender, row, body, changed=changed)
    if not same:
        await _tell_sender(db, who, referral_id, sender, row, body)
    if not changed:
        return StatusOut(
            recipient=who.agency_id, status=row.status, reason=row.reason, note=row.note,
            signed_at=row.signed_at, signature=row.signature, updated_at=row.updated_at,
        )
    return StatusOut(
        recipient=who.agency_id, status=body.status, reason=body.reason, note=body.note,
        signed_at=body.signed_at, signature=body.signature, updated_at=now,
    )


async def _require_recipient(db: AsyncSession, who: Principal, referral_id: str) -> Access:
    """The caller's access as a recipient, its own row locked; 403 for the sender."""
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
    return access


async def _verify_signature(
    db: AsyncSession, who: Principal, referral_id: str, body: StatusIn
) -> None:
    """The status is signed with the caller's agency's current signing key, or 422."""
    directory = await _directory(db, [who.agency_id])
    try:
        env.verify_status(
            {**body.model_dump(), "recipient": who.agency_id},
            referral_id=referral_id,
            sig_public=_sig_key(directory, who.agency_id),
        )
    except env.EnvelopeError as exc:
        raise errors.Unprocessable(
            f"{exc.message} with this agency's current signing key",
            slug="status/bad-signature",
        ) from None


def _check_signed_at(signed_at: str, now: datetime, settings: Settings) -> None:
    skew = settings.referrals.max_clock_skew
    if abs((parse_time(signed_at) - now).total_seconds()) > skew:
        raise errors.Unprocessable(
            f"signed_at is more than {skew} seconds from the server's clock ({rfc3339(now)})",
            slug="status/clock-skew",
        )


def _check_transition(row: OwnStatus, body: StatusIn) -> None:
    """A new status is one ``TRANSITIONS`` allows from the stored one; rejected has a reason."""
    # a stored status is a TaskStatus value (a StrEnum: the str finds its key)
    if body.status not in TRANSITIONS.get(cast(vocab.TaskStatus, row.status), frozenset()):
        raise errors.Conflict(
            f"a referral that is {row.status} cannot become {body.status}",
            slug="invalid-transition",
        )
    if body.status == "rejected" and not body.reason:
        raise errors.Unprocessable("rejected needs a reason code", slug="reason-required")


async def _write_status(
    db: AsyncSession, who: Principal, referral_id: str, body: StatusIn, now: datetime
) -> None:
    await prepared(_SET_STATUS, ReferralRecipient).all(db, {
        "row_referral_id": referral_id,
        "row_recipient": who.agency_id,
        "new_status": body.status,
        "new_reason": body.reason,
        "new_note": body.note,
        "new_signed_at": body.signed_at,
        "new_signature": body.signature,
        "new_updated_at": now,
    })


async def _record_status(
    db: AsyncSession,
    who: Principal,
    referral_id: str,
    sender: str,
    row: OwnStatus,
    body: StatusIn,
    *,
    changed: bool,
) -> None:
    """The audit event: from, to, reason, whether a note came (never the note)."""
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_STATUS,
        "referral",
        referral_id,
        subject_agency=sender,
        detail={
            "from": row.status,
            "to": body.status,
            "reason": body.reason,
            "note": body.note is not None,
            "unchanged": not changed,
        },
    )


async def _tell_sender(
    db: AsyncSession,
    who: Principal,
    referral_id: str,
    sender: str,
    row: OwnStatus,
    body: StatusIn,
) -> None:
    """``referral.status_changed`` to the sender."""
    await webhooks.enqueue(
        db,
        EventType.REFERRAL_STATUS_CHANGED,
        referral_id,
        {
            sender: {
                "recipient": who.agency_id,
                "status": body.status,
                "previous_status": row.status,
                "reason": body.reason,
            }
        },
    )


async def withdraw(db: AsyncSession, who: Principal, referral_id: str) -> list[StatusOut]:
    """Cancel for every recipient and shred their wrapped keys; they get 404 from then on."""
    referral = await _require_sender(db, who, referral_id, Action.REFERRAL_WITHDRAW)
    now = utcnow()
    first = referral.withdrawn_at is None
    shredded = 0
    if first:
        referral.withdrawn_at = now
        await db.execute(
            update(ReferralRecipient)
            .where(col(ReferralRecipient.referral_id) == referral_id)
            .values(status=vocab.TaskStatus.CANCELLED, reason=None, note=None, signed_at=None,
                    signature=None, updated_at=now)
        )
        result = await db.execute(
            delete(WrappedKey).where(
                col(WrappedKey.referral_id) == referral_id,
                col(WrappedKey.recipient) != who.agency_id,
            )
        )
        shredded = int(getattr(result, "rowcount", 0) or 0)
        await db.flush()
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_WITHDRAW,
        "referral",
        referral_id,
        subject_agency=who.agency_id,
        detail={"unchanged": not first, "wrapped_keys_deleted": shredded},
    )
    statuses = (await _status_dicts(db, [referral_id]))[referral_id]
    if first:
        await webhooks.enqueue(
            db,
            EventType.REFERRAL_CANCELLED,
            referral_id,
            {s["recipient"]: {"sender_agency": who.agency_id} for s in statuses},
            visible_only=False,
        )
    return [StatusOut.model_validate(s) for s in statuses]
