"""Who may see which referral, and which of its fields (``app.authz.referrals``).

Rules (DESIGN.md, "Identity and authorization"):
- a referral is visible to its sending agency and to its recipient agencies,
  and to nobody else; anyone else gets 404, exactly as for a missing referral;
- a recipient sees a field only while it holds an active grant for it
  (not revoked, not expired), and nothing of other recipients' grants,
  requests or statuses;
- a withdrawn referral does not exist for its recipients (404 on read and on
  status; its list item stays, cancelled, so the inbox shows what happened);
- a law-enforcement agency sees a referral only while at least one field is
  consented to it: a referral that lists it with no active grant does not
  exist for it (not in its inbox, 404 on read and on status);
- auditors and admins never see referral content (their roles lack the scopes).

Every referral read and list goes through ``visible_referrals`` or
``relation``; routes never re-write these conditions. Both are built for the
hot paths: a list is one statement (the received box is read from the
caller's ``referral_recipient`` rows, in the order of their inbox index), and
``relation`` is one statement, two when the caller is a recipient that needs
its fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    SQLColumnExpression,
    and_,
    bindparam,
    exists,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select
from sqlmodel import col

from app.db import prepared
from app.identity import Principal
from app.models.tables import Referral, ReferralField, ReferralGrant, ReferralRecipient, WrappedKey
from app.models.types import UTCDateTime
from app.vocab import AgencyKind

LAW_ENFORCEMENT = AgencyKind.LAW_ENFORCEMENT


class Relation(StrEnum):
    SENDER = "sender"
    RECIPIENT = "recipient"


# The statements below are built once per shape with bind parameters (``:me``,
# ``:now``, ``:referral_id``): building SQLAlchemy expressions costs more than
# running them on the hot paths. ``params(who, now)`` gives the values.
ME: BindParameter[str] = bindparam("me")
NOW = bindparam("now", type_=UTCDateTime())
REFERRAL_ID: BindParameter[str] = bindparam("referral_id")


def active_grant(recipient: Any, now: Any) -> Any:
    """SQL condition: ``referral_grant`` row is an active grant to ``recipient``."""
    return and_(
        col(ReferralGrant.recipient) == recipient,
        col(ReferralGrant.revoked_at).is_(None),
        or_(col(ReferralGrant.expires_at).is_(None), col(ReferralGrant.expires_at) > now),
    )


def _holds_a_grant(referral_id: Any, agency: Any = ME, now: Any = NOW) -> Any:
    """SQL condition: ``agency`` (by default the caller, ``:me``) holds an active grant
    (at ``now``, by default ``:now``) on the referral."""
    return exists().where(col(ReferralGrant.referral_id) == referral_id, active_grant(agency, now))


def listed_agency_sees(referral_id: Any, agency: Any, kind: Any, now: Any) -> Any:
    """SQL condition: ``agency`` (of ``kind``), listed as a recipient of the referral, may
    see it at ``now``: any agency but law enforcement, which needs an active grant.

    The rule of ``visible_referrals`` and ``relation`` (which know the caller's kind
    and so add the grant check only for law enforcement), for a statement about
    several agencies at once (``app.authz.webhooks``: whom a referral event reaches).
    """
    return or_(kind != LAW_ENFORCEMENT, _holds_a_grant(referral_id, agency, now))


def params(who: Principal, now: datetime, **more: Any) -> dict[str, Any]:
    """Values of the bind parameters of the statements of this module."""
    return {"me": who.agency_id, "now": now, **more}


@cache
def visible_referrals(box: str, law_enforcement: bool) -> Select[*tuple[Any, ...]]:
    """Summary rows of the referrals in ``box`` (sent|received) that ``:me`` may see.

    ``law_enforcement``: the caller's agency is of that kind (its received box
    then needs an active grant at ``:now``). Execute with ``params(who, now)``.

    Columns: ``id``, ``sender_agency``, ``created_at``, ``received_at``,
    ``version``, ``withdrawn_at``; never the manifest or any content.

    The sent box reads ``referral`` by sender (``received_at`` is the
    referral's). The received box is driven from the caller's own
    ``referral_recipient`` rows (index ``ix_referral_recipient_inbox``), adds
    the caller's request and status (``request_json``, ``status``, ``reason``,
    ``note``, ``signed_at``, ``signature``, ``updated_at``), and
    its ``received_at`` is when the referral reached this recipient: the
    referral's own time, or for a recipient added later by a grant update, the
    time of that update.
    """
    summary = (
        col(Referral.id),
        col(Referral.sender_agency),
        col(Referral.created_at),
        col(Referral.version),
        col(Referral.withdrawn_at),
    )
    if box == "sent":
        return select(*summary, col(Referral.received_at)).where(col(Referral.sender_agency) == ME)
    stmt = (
        select(
            *summary,
            col(ReferralRecipient.received_at),
            col(ReferralRecipient.request_json),
            col(ReferralRecipient.status),
            col(ReferralRecipient.reason),
            col(ReferralRecipient.note),
            col(ReferralRecipient.signed_at),
            col(ReferralRecipient.signature).label("status_signature"),
            col(ReferralRecipient.updated_at),
        )
        .select_from(ReferralRecipient)
        .join(Referral, col(Referral.id) == col(ReferralRecipient.referral_id))
        .where(col(ReferralRecipient.recipient) == ME)
    )
    if law_enforcement:
        # Grants only name listed recipients, so this is "recipient with >= 1 active grant".
        stmt = stmt.where(_holds_a_grant(col(ReferralRecipient.referral_id)))
    return stmt


@dataclass(frozen=True)
class Head:
    """What every action on a referral needs; ``manifest_json`` and ``signature``
    only when ``relation(..., content=True)``."""

    id: str
    sender_agency: str
    withdrawn_at: datetime | None
    version: int
    manifest_json: str | None
    signature: str | None


@dataclass(frozen=True)
class OwnStatus:
    """The caller's own ``referral_recipient`` row (recipients only)."""

    request: str
    status: str
    reason: str | None
    note: str | None
    signed_at: str | None
    signature: str | None
    updated_at: datetime


@dataclass(frozen=True)
class Grant:
    """An active grant of the caller; with ``content=True`` also what it opens:
    its disclosure, the field's disclosure and ciphertext, and the caller's
    wrapped key (None when absent)."""

    fid: str
    purpose: str
    expires_at: datetime | None
    disclosure: str | None = None
    field_disclosure: str | None = None
    ciphertext: str | None = None
    kid: str | None = None
    wrapped_key: str | None = None


@dataclass(frozen=True)
class Access:
    referral: Head
    relation: Relation
    fields: dict[str, Grant]  # active grants of the caller by fid (recipients only)
    own: OwnStatus | None = None  # the caller's status row (recipients only)


_OWN_COLUMNS: tuple[SQLColumnExpression[Any], ...] = (
    col(ReferralRecipient.recipient),
    col(ReferralRecipient.request),
    col(ReferralRecipient.status),
    col(ReferralRecipient.reason),
    col(ReferralRecipient.note),
    col(ReferralRecipient.signed_at),
    col(ReferralRecipient.signature).label("status_signature"),
    col(ReferralRecipient.updated_at),
)


@cache
def _relation_query(
    content: bool, lock_own: bool, law_enforcement: bool
) -> Select[*tuple[Any, ...]]:
    head: list[Any] = [
        col(Referral.id),
        col(Referral.sender_agency),
        col(Referral.withdrawn_at),
        col(Referral.version),
    ]
    if content:
        head += [col(Referral.manifest_json), col(Referral.signature)]
    else:
        head += [null().label("manifest_json"), null().label("signature")]
    granted = _holds_a_grant(col(Referral.id)) if law_enforcement else true()
    columns = (*head, *_OWN_COLUMNS, granted.label("granted"))
    if lock_own:
        return (
            select(*columns)
            .select_from(ReferralRecipient)
            .join(Referral, col(Referral.id) == col(ReferralRecipient.referral_id))
            .where(
                col(ReferralRecipient.referral_id) == REFERRAL_ID,
                col(ReferralRecipient.recipient) == ME,
            )
            .with_for_update(of=ReferralRecipient)
        )
    return (
        select(*columns)
        .outerjoin(
            ReferralRecipient,
            and_(
                col(ReferralRecipient.referral_id) == col(Referral.id),
                col(ReferralRecipient.recipient) == ME,
            ),
        )
        .where(col(Referral.id) == REFERRAL_ID)
    )


async def relation(
    db: AsyncSession,
    who: Principal,
    referral_id: str,
    now: datetime,
    *,
    content: bool = False,
    lock_own: bool = False,
) -> Access | None:
    """How ``who`` relates to a referral, or None when it may not see it at all.

    One statement reads the referral, the caller's own recipient row and, for
    a law-enforcement caller, whether it holds an active grant. A recipient's
    active grants (``fields``) are read only with ``content=True``, in a second
    statement that also brings each granted field's ciphertext and the
    caller's wrapped key. ``lock_own`` takes the caller's recipient row
    ``FOR UPDATE`` in the first statement (status changes).
    """
    le = who.law_enforcement
    values = params(who, now, referral_id=referral_id)
    row = None
    if lock_own:
        row = await prepared(_relation_query(content, True, le)).first(db, values)
    if row is None:
        row = await prepared(_relation_query(content, False, le)).first(db, values)
    if row is None:
        return None
    head = Head(
        row.id, row.sender_agency, row.withdrawn_at, row.version, row.manifest_json,
        row.signature,
    )
    if head.sender_agency == who.agency_id:
        return Access(head, Relation.SENDER, {})
    if row.recipient is None or not row.granted or head.withdrawn_at is not None:
        return None
    own = OwnStatus(
        row.request, row.status, row.reason, row.note, row.signed_at, row.status_signature,
        row.updated_at,
    )
    fields = {}
    if content:
        fields = {r.fid: Grant(*r) for r in await prepared(_ACTIVE_GRANTS).all(db, values)}
    return Access(head, Relation.RECIPIENT, fields, own)


# The caller's active grants on one referral, each with its disclosure, the field's
# disclosure and ciphertext, and the caller's wrapped key for it (None where absent).
_ACTIVE_GRANTS: Select[*tuple[Any, ...]] = (
    select(
        col(ReferralGrant.fid),
        col(ReferralGrant.purpose),
        col(ReferralGrant.expires_at),
        col(ReferralGrant.disclosure),
        col(ReferralField.disclosure).label("field_disclosure"),
        col(ReferralField.ciphertext),
        col(WrappedKey.kid),
        col(WrappedKey.wrapped_key),
    )
    .outerjoin(
        ReferralField,
        and_(
            col(ReferralField.referral_id) == col(ReferralGrant.referral_id),
            col(ReferralField.fid) == col(ReferralGrant.fid),
        ),
    )
    .outerjoin(
        WrappedKey,
        and_(
            col(WrappedKey.referral_id) == col(ReferralGrant.referral_id),
            col(WrappedKey.fid) == col(ReferralGrant.fid),
            col(WrappedKey.recipient) == col(ReferralGrant.recipient),
        ),
    )
    .where(col(ReferralGrant.referral_id) == REFERRAL_ID, active_grant(ME, NOW))
    .order_by(col(ReferralGrant.fid))
)
