"""A new referral (``POST /v1/referrals``): idempotent replay, checks, one store, its
audit event, its webhook events and the 201 response."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import errors, vocab
from app.config import Settings
from app.crypto import envelope as env
from app.crypto.canonical import canonical_json
from app.crypto.wire import EnvelopeIn, GrantValue
from app.db import prepared
from app.identity import Principal
from app.models.schemas import ReferralSummary, StatusOut
from app.models.tables import IdempotencyRecord, table_of
from app.models.types import utcnow
from app.models.webhook_schemas import EventType
from app.services import audit, webhooks
from app.services.audit import Action
from app.services.referrals.checks import (
    _check_clock,
    _check_expiry,
    _check_kids,
    _check_recipients,
    _named_in,
    _parsed_disclosures,
    _sig_key,
)
from app.services.referrals.common import (
    _grant_detail,
    _invalid,
    _refuse_foreign_sender,
    _validated,
)
from app.services.referrals.store import (
    _directory,
    _grant_row,
    _recipient_row,
    _Rows,
    _store,
    _wrapped_rows,
)

# a client's kept response for a key, and keeping one (built once: see app.db.Prepared)
_KEPT = select(
    col(IdempotencyRecord.request_sha256),
    col(IdempotencyRecord.status_code),
    col(IdempotencyRecord.response_json),
).where(
    col(IdempotencyRecord.client_id) == bindparam("kept_client_id"),
    col(IdempotencyRecord.key) == bindparam("kept_key"),
)
_KEEP = insert(IdempotencyRecord).values(
    {c: bindparam(c, type_=table_of(IdempotencyRecord).c[c].type) for c in (
        "client_id", "key", "request_sha256", "status_code", "response_json", "created_at"
    )}
)


def _request_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


async def replay_idempotent(
    db: AsyncSession, who: Principal, key: str, body: Mapping[str, Any]
) -> tuple[int, dict[str, Any]] | None:
    record = await prepared(_KEPT, IdempotencyRecord).first(
        db, {"kept_client_id": who.client_id, "kept_key": key}
    )
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
    raw: Mapping[str, Any],
    *,
    settings: Settings,
    idempotency_key: str | None,
) -> tuple[int, dict[str, Any]]:
    """Store a new referral; returns (status code, response body).

    The steps: replay a known Idempotency-Key; check the envelope; store its rows
    (or answer a concurrent twin like the first); record and announce it; keep
    the response for the key.
    """
    if idempotency_key is not None:
        replayed = await replay_idempotent(db, who, idempotency_key, raw)
        if replayed is not None:
            return replayed
    body: EnvelopeIn = _validated(EnvelopeIn, raw)
    checked, grants, now = await _check(db, who, body, settings)
    rows = _rows(who, body, checked, now)
    if not await _store(db, rows):
        return await _replay_twin(db, who, idempotency_key, raw)
    recipients = sorted(checked.recipients)
    await _record(db, who, rows, checked, grants)
    await _announce(db, who, rows, recipients)
    response = ReferralSummary(
        referral_id=body.manifest.referral_id,
        sender_agency=who.agency_id,
        created_at=body.manifest.created_at,
        version=1,
        statuses=[StatusOut(recipient=rid, status=vocab.TaskStatus.REQUESTED, updated_at=now)
                  for rid in recipients],
    ).model_dump(mode="json")
    if idempotency_key is not None:
        await _keep_response(db, who, idempotency_key, raw, response)
    return 201, response


async def _check(
    db: AsyncSession, who: Principal, body: EnvelopeIn, settings: Settings
) -> tuple[env.CheckedReferral, list[GrantValue], datetime]:
    """The envelope checked in itself, against the directory (one read) and the clock;
    with its grants and the time of receipt."""
    await _refuse_foreign_sender(db, who, Action.REFERRAL_CREATE, body.manifest)
    parsed = _parsed_disclosures(body.disclosures)
    directory = await _directory(db, {who.agency_id, *_named_in(parsed)})
    r = settings.referrals
    try:
        checked = env.check_envelope(
            body,
            sender_sig_public=_sig_key(directory, who.agency_id),
            limits=env.Limits(r.max_fields, r.max_field_bytes, r.max_recipients),
            parsed=parsed,
        )
    except env.EnvelopeError as exc:
        raise _invalid(exc) from None
    _check_recipients(checked.recipients, directory)
    grants = [d.value for d in checked.grants.values() if isinstance(d.value, GrantValue)]
    _check_kids(grants, directory)
    now = utcnow()
    _check_clock(body.manifest.created_at, now, settings)
    _check_expiry(grants, now, settings)
    return checked, grants, now


def _rows(
    who: Principal, body: EnvelopeIn, checked: env.CheckedReferral, now: datetime
) -> _Rows:
    """The rows of the five tables for a checked envelope."""
    manifest = body.manifest
    referral_id = manifest.referral_id
    return _Rows(
        referral={
            "id": referral_id,
            "sender_agency": who.agency_id,
            "sender_kid": manifest.sender_kid,
            "created_at": manifest.created_at,
            "received_at": now,
            "manifest_json": checked.manifest_bytes.decode("utf-8"),
            "signature": body.signature,
        },
        fields=[
            {"referral_id": referral_id, "fid": fid, "disclosure": d.disclosure,
             "ciphertext": body.ciphertexts[fid]}
            for fid, d in checked.fields.items()
        ],
        recipients=[_recipient_row(referral_id, d, now) for d in checked.requests.values()],
        grants=[_grant_row(referral_id, d, now) for d in checked.grants.values()],
        wrapped=_wrapped_rows(referral_id, body.wrapped_keys),
    )


async def _replay_twin(
    db: AsyncSession, who: Principal, idempotency_key: str | None, raw: Mapping[str, Any]
) -> tuple[int, dict[str, Any]]:
    """The answer when the referral's id exists: 409, unless it is a twin.

    A concurrent re-post of the same envelope with the same key (a client retrying
    while its first request is still in flight) waited for the first to commit:
    it is answered like the first.
    """
    if idempotency_key is not None:
        replayed = await replay_idempotent(db, who, idempotency_key, raw)
        if replayed is not None:
            return replayed
    raise errors.Conflict("a referral with this referral_id exists", slug="referral-exists")


async def _record(
    db: AsyncSession,
    who: Principal,
    rows: _Rows,
    checked: env.CheckedReferral,
    grants: list[GrantValue],
) -> None:
    """The audit event: recipients, field ids and the grants to others (never names)."""
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_CREATE,
        "referral",
        rows.referral["id"],
        subject_agency=who.agency_id,
        detail={
            "recipients": sorted(checked.recipients),
            "fids": sorted(checked.fields),
            "grants": _grant_detail(g for g in grants if g.recipient != who.agency_id),
        },
    )


async def _announce(
    db: AsyncSession, who: Principal, rows: _Rows, recipients: list[str]
) -> None:
    """``referral.received`` to each recipient, with its own request."""
    requests = {
        row["recipient"]: json.loads(row["request_json"]) for row in rows.recipients
    }
    await webhooks.enqueue(
        db,
        EventType.REFERRAL_RECEIVED,
        rows.referral["id"],
        {rid: {"sender_agency": who.agency_id, "request": requests[rid]} for rid in recipients},
    )


async def _keep_response(
    db: AsyncSession,
    who: Principal,
    idempotency_key: str,
    raw: Mapping[str, Any],
    response: dict[str, Any],
) -> None:
    """Remember the 201 for this client's Idempotency-Key (replayed by ``replay_idempotent``)."""
    await prepared(_KEEP, IdempotencyRecord).all(db, {
        "client_id": who.client_id,
        "key": idempotency_key,
        "request_sha256": _request_hash(raw),
        "status_code": 201,
        "response_json": json.dumps(response),
        "created_at": utcnow(),
    })
