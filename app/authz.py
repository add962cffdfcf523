"""Who may see what: the one policy module for referrals.

Rules (DESIGN.md, "Identity and authorization"):
- a referral is visible to its sending agency and to its recipient agencies,
  and to nobody else; anyone else gets 404, exactly as for a missing referral;
- a recipient sees a field only while it holds an active grant for it
  (not revoked, not expired);
- a law-enforcement agency sees a referral only while at least one field is
  consented to it: a referral that lists it with no active grant does not
  exist for it (not in its inbox, 404 on read and on status);
- auditors and admins never see referral content (their roles lack the scopes).

Every referral read and list goes through ``visible_referrals`` or
``relation``; routes never re-write these conditions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from app.auth import Principal
from app.models.tables import Referral, ReferralGrant, ReferralRecipient

LAW_ENFORCEMENT = "law_enforcement"


class Relation(StrEnum):
    SENDER = "sender"
    RECIPIENT = "recipient"


def active_grant(recipient: str, now: datetime) -> Any:
    """SQL condition: ``referral_grant`` row is an active grant to ``recipient``."""
    return and_(
        ReferralGrant.recipient == recipient,
        ReferralGrant.revoked_at.is_(None),
        or_(ReferralGrant.expires_at.is_(None), ReferralGrant.expires_at > now),
    )


def _recipient_visibility(who: Principal, now: datetime) -> Any:
    is_recipient = exists().where(
        ReferralRecipient.referral_id == Referral.id,
        ReferralRecipient.recipient == who.agency_id,
    )
    if who.agency_kind != LAW_ENFORCEMENT:
        return is_recipient
    return exists().where(
        ReferralGrant.referral_id == Referral.id,
        active_grant(who.agency_id, now),
    )


def visible_referrals(who: Principal, box: str, now: datetime) -> Select[tuple[Referral]]:
    """Referrals in ``box`` (sent|received) that ``who`` may see."""
    stmt = select(Referral)
    if box == "sent":
        return stmt.where(Referral.sender_agency == who.agency_id)
    return stmt.where(_recipient_visibility(who, now))


@dataclass(frozen=True)
class Access:
    referral: Referral
    relation: Relation
    fields: dict[str, ReferralGrant]  # active grants of the caller (recipients only)


async def relation(
    db: AsyncSession, who: Principal, referral_id: str, now: datetime
) -> Access | None:
    """How ``who`` relates to a referral, or None when it may not see it at all."""
    referral = await db.get(Referral, referral_id)
    if referral is None:
        return None
    if referral.sender_agency == who.agency_id:
        return Access(referral, Relation.SENDER, {})
    is_recipient = await db.scalar(
        select(ReferralRecipient.recipient).where(
            ReferralRecipient.referral_id == referral_id,
            ReferralRecipient.recipient == who.agency_id,
        )
    )
    if is_recipient is None:
        return None
    grants = (
        await db.scalars(
            select(ReferralGrant).where(
                ReferralGrant.referral_id == referral_id,
                active_grant(who.agency_id, now),
            )
        )
    ).all()
    if who.agency_kind == LAW_ENFORCEMENT and not grants:
        return None
    return Access(referral, Relation.RECIPIENT, {g.field: g for g in grants})
