"""Consent changes by the sender: amendments that add grants (and recipients) with a new
manifest version, and revocations that delete wrapped keys at once."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import errors
from app.config import Settings
from app.crypto import envelope as env
from app.crypto.wire import Amendment, GrantValue, Manifest
from app.identity import Principal
from app.models.tables import (
    Referral,
    ReferralField,
    ReferralGrant,
    ReferralRecipient,
    WrappedKey,
    table_of,
)
from app.models.types import utcnow
from app.models.webhook_schemas import EventType
from app.services import audit, webhooks
from app.services.audit import Action
from app.services.referrals.checks import (
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
    _require_sender,
    _validated,
)
from app.services.referrals.store import _directory, _grant_row, _recipient_row, _wrapped_rows

_BUMP_VERSION = (
    update(Referral)
    .where(
        col(Referral.id) == bindparam("row_id"), col(Referral.version) == bindparam("row_version")
    )
    .values(
        version=bindparam("new_version"),
        manifest_json=bindparam("new_manifest"),
        signature=bindparam("new_signature"),
    )
)


async def amend(
    db: AsyncSession,
    who: Principal,
    referral_id: str,
    raw: Mapping[str, Any],
    *,
    settings: Settings,
) -> dict[str, Any]:
    """Add consent with a new manifest version; the loser of a race gets 409, nothing lost.

    The steps: the sender's referral, not withdrawn, amended under its own id; the
    amendment checked against the stored manifest, the directory and the clock;
    the version bumped (the race is decided there); the grants replaced and new
    recipients added; the event recorded and the recipients told.
    """
    body: Amendment = _validated(Amendment, raw)
    referral = await _require_sender(db, who, referral_id, Action.GRANT_ADD)
    if referral.withdrawn_at is not None:
        raise errors.Conflict("the referral was withdrawn", slug="referral-withdrawn")
    current = Manifest.model_validate_json(referral.manifest_json)
    if body.manifest.referral_id != referral_id:
        raise errors.Unprocessable(
            "manifest.referral_id is not this referral", slug="envelope/manifest-changed"
        )
    await _refuse_foreign_sender(db, who, Action.GRANT_ADD, body.manifest)
    checked, grants, now = await _check_amendment(db, who, referral_id, current, body, settings)
    await _bump_version(db, referral_id, current, body, checked)
    new_rows = await _store_amendment(db, referral_id, body, checked, now)
    new_recipients = sorted(checked.new_recipients)
    await audit.record(
        db,
        who.actor,
        Action.GRANT_ADD,
        "referral",
        referral_id,
        subject_agency=who.agency_id,
        detail={
            "version": body.manifest.version,
            "grants": _grant_detail(grants),
            "new_recipients": new_recipients,
        },
    )
    await _announce_amendment(db, who, referral_id, grants, new_rows)
    return {
        "referral_id": referral_id,
        "version": body.manifest.version,
        "grants": [d.disclosure for d in checked.grants.values()],
        "new_recipients": new_recipients,
    }


async def _check_amendment(
    db: AsyncSession,
    who: Principal,
    referral_id: str,
    current: Manifest,
    body: Amendment,
    settings: Settings,
) -> tuple[env.CheckedAmendment, list[GrantValue], datetime]:
    """The amendment checked against the stored manifest (the next version), the stored
    fields and recipients, the directory and the clock; with its grants and the time."""
    fids = list(await db.scalars(
        select(col(ReferralField.fid)).where(col(ReferralField.referral_id) == referral_id)
    ))
    recipients = list(
        await db.scalars(
            select(col(ReferralRecipient.recipient)).where(
                col(ReferralRecipient.referral_id) == referral_id
            )
        )
    )
    parsed = _parsed_disclosures(body.disclosures)
    directory = await _directory(db, {who.agency_id, *_named_in(parsed)})
    if body.manifest.version != current.version + 1:
        raise errors.Conflict(
            f"the referral is at version {current.version}: read it again and amend "
            f"version {current.version + 1}",
            slug="version-conflict",
        )
    try:
        checked = env.check_amendment(
            current, body, sender_sig_public=_sig_key(directory, who.agency_id), fids=fids,
            recipients=recipients, max_recipients=settings.referrals.max_recipients,
            parsed=parsed,
        )
    except env.EnvelopeError as exc:
        raise _invalid(exc) from None
    grants = [d.value for d in checked.grants.values() if isinstance(d.value, GrantValue)]
    _check_recipients({g.recipient for g in grants}, directory)
    _check_kids(grants, directory)
    now = utcnow()
    _check_expiry(grants, now, settings)
    return checked, grants, now


async def _bump_version(
    db: AsyncSession,
    referral_id: str,
    current: Manifest,
    body: Amendment,
    checked: env.CheckedAmendment,
) -> None:
    """The new manifest, only over the version it amends: 409 when another came first."""
    bumped = await db.execute(_BUMP_VERSION, {
        "row_id": referral_id,
        "row_version": current.version,
        "new_version": body.manifest.version,
        "new_manifest": checked.manifest_bytes.decode("utf-8"),
        "new_signature": body.signature,
    })
    if getattr(bumped, "rowcount", 0) != 1:
        raise errors.Conflict(
            "another amendment of this referral was stored first: read it again and amend "
            "the new version",
            slug="version-conflict",
        )


async def _store_amendment(
    db: AsyncSession,
    referral_id: str,
    body: Amendment,
    checked: env.CheckedAmendment,
    now: datetime,
) -> list[dict[str, Any]]:
    """Replace the amended grants and their wrapped keys; add the new recipients' rows
    (returned)."""
    pairs = list(checked.grants)
    await db.execute(delete(ReferralGrant).where(
        col(ReferralGrant.referral_id) == referral_id,
        tuple_(col(ReferralGrant.fid), col(ReferralGrant.recipient)).in_(pairs),
    ))
    await db.execute(delete(WrappedKey).where(
        col(WrappedKey.referral_id) == referral_id,
        tuple_(col(WrappedKey.fid), col(WrappedKey.recipient)).in_(pairs),
    ))
    await db.execute(
        insert(table_of(ReferralGrant)),
        [_grant_row(referral_id, d, now) for d in checked.grants.values()],
    )
    await db.execute(insert(table_of(WrappedKey)), _wrapped_rows(referral_id, body.wrapped_keys))
    new_rows = [_recipient_row(referral_id, d, now) for d in checked.requests.values()]
    if new_rows:
        await db.execute(insert(table_of(ReferralRecipient)), new_rows)
    return new_rows


async def _announce_amendment(
    db: AsyncSession,
    who: Principal,
    referral_id: str,
    grants: list[GrantValue],
    new_rows: list[dict[str, Any]],
) -> None:
    """``grant.added`` to each recipient of a new grant; ``referral.received`` to new ones."""
    await webhooks.enqueue(
        db,
        EventType.GRANT_ADDED,
        referral_id,
        {
            r: {"sender_agency": who.agency_id,
                "fids": sorted(g.fid for g in grants if g.recipient == r)}
            for r in {g.recipient for g in grants}
        },
    )
    if new_rows:
        await webhooks.enqueue(
            db,
            EventType.REFERRAL_RECEIVED,
            referral_id,
            {row["recipient"]: {"sender_agency": who.agency_id,
                                "request": json.loads(row["request_json"])}
             for row in new_rows},
        )


async def revoke(
    db: AsyncSession, who: Principal, referral_id: str, pairs: Sequence[tuple[str, str]]
) -> datetime:
    """Revoke (fid, recipient) consents: their wrapped keys are deleted at once."""
    await _require_sender(db, who, referral_id, Action.CONSENT_REVOKE)
    unique = sorted(set(pairs))
    if any(recipient == who.agency_id for _, recipient in unique):
        raise errors.Unprocessable(
            "the sender's own copies cannot be revoked; withdraw the referral instead",
            slug="cannot-revoke-sender",
        )
    await _check_grants_exist(db, referral_id, unique)
    now = utcnow()
    await db.execute(
        delete(WrappedKey).where(
            col(WrappedKey.referral_id) == referral_id,
            tuple_(col(WrappedKey.fid), col(WrappedKey.recipient)).in_(unique),
        )
    )
    await db.execute(
        update(ReferralGrant)
        .where(
            col(ReferralGrant.referral_id) == referral_id,
            tuple_(col(ReferralGrant.fid), col(ReferralGrant.recipient)).in_(unique),
            col(ReferralGrant.revoked_at).is_(None),
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
        detail={"revocations": [{"fid": f, "recipient": r} for f, r in unique]},
    )
    await webhooks.enqueue(
        db,
        EventType.CONSENT_REVOKED,
        referral_id,
        {
            r: {"sender_agency": who.agency_id, "fids": sorted(f for f, rr in unique if rr == r)}
            for r in {r for _, r in unique}
        },
        visible_only=False,
    )
    return now


async def _check_grants_exist(
    db: AsyncSession, referral_id: str, unique: Sequence[tuple[str, str]]
) -> None:
    """Every (fid, recipient) to revoke is a consent of this referral, or 422."""
    found = {
        (f, r)
        for f, r in await db.execute(
            select(col(ReferralGrant.fid), col(ReferralGrant.recipient)).where(
                col(ReferralGrant.referral_id) == referral_id,
                tuple_(col(ReferralGrant.fid), col(ReferralGrant.recipient)).in_(unique),
            )
        )
    }
    missing = [p for p in unique if p not in found]
    if missing:
        raise errors.Unprocessable(
            f"no consent for field {missing[0][0]} to {missing[0][1]}", slug="unknown-grant"
        )
