"""What every referral operation shares: request validation, the 404/403 that record a denial,
the caller's relation to a referral, ``GET /v1/limits`` and audit detail of grants."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pydantic
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import errors, vocab
from app.authz import Access, Relation, relation
from app.config import Settings
from app.crypto import envelope as env
from app.crypto.wire import GrantValue, Manifest
from app.identity import Principal
from app.models.schemas import Limits
from app.models.tables import Referral
from app.models.types import utcnow
from app.services import audit
from app.services.audit import Action

TRANSITIONS = vocab.TRANSITIONS


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def limits(settings: Settings) -> Limits:
    """What a client must know before sealing (``GET /v1/limits``)."""
    r = settings.referrals
    return Limits(
        max_consent_days=r.max_consent_days,
        max_fields=r.max_fields,
        max_field_bytes=r.max_field_bytes,
        max_recipients=r.max_recipients,
        max_clock_skew_seconds=r.max_clock_skew,
        services=[s.value for s in vocab.Service],
        purposes=[p.value for p in vocab.Purpose],
        urgencies=[u.value for u in vocab.Urgency],
    )


def _invalid(exc: env.EnvelopeError) -> errors.Unprocessable:
    return errors.Unprocessable(exc.message, slug=f"envelope/{exc.code}")


def _validated(model: type[Any], body: Mapping[str, Any]) -> Any:
    """The request body as ``model`` (strict), or a 422 naming the first broken rule."""
    try:
        return model.model_validate(body, strict=True)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        unknown = err["type"] == "extra_forbidden"
        raise errors.Unprocessable(
            f"{where}: {'unknown member' if unknown else err['msg']}",
            slug="envelope/malformed",
            extra={"errors": [
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                for e in exc.errors()[:20]
            ]},
        ) from None


async def _not_found(
    db: AsyncSession, who: Principal, action: Action, referral_id: str
) -> errors.NotFound:
    """404 for a referral that is missing or not the caller's to see, recorded as denied.

    The event names the referral's sender as ``subject_agency`` when it exists,
    so that denied attempts appear in the sender's access report.
    """
    sender = await db.scalar(
        select(col(Referral.sender_agency)).where(col(Referral.id) == referral_id)
    )
    return errors.NotFound(
        "no such referral",
        audit=audit.denied(
            who.actor, action, "referral", referral_id, {"reason": "not visible"},
            subject_agency=sender,
        ),
    )


async def _refuse_foreign_sender(
    db: AsyncSession, who: Principal, action: Action, manifest: Manifest
) -> None:
    """403 when the manifest names another sender; the event names the referral's real
    sender (else the agency the manifest claims to be) as ``subject_agency``, so the
    attempt appears in that agency's access report."""
    if manifest.sender_agency != who.agency_id:
        sender = await db.scalar(
            select(col(Referral.sender_agency)).where(col(Referral.id) == manifest.referral_id)
        )
        raise errors.Forbidden(
            "manifest.sender_agency must be the caller's agency",
            slug="envelope/sender-mismatch",
            audit=audit.denied(
                who.actor, action, "referral", manifest.referral_id,
                {"reason": "sender_mismatch"},
                subject_agency=sender or manifest.sender_agency,
            ),
        )


def _grant_detail(grants: Iterable[GrantValue]) -> list[dict[str, Any]]:
    """Grants as audit detail: field ids, recipients, purposes and expiries; never names."""
    return [
        {"fid": g.fid, "recipient": g.recipient, "purpose": g.purpose, "expires_at": g.expires_at}
        for g in sorted(grants, key=lambda g: (g.fid, g.recipient))
    ]


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


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
        raise await _not_found(db, who, action, referral_id)
    return access


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
        raise await _not_found(db, who, action, referral_id)
    return referral
