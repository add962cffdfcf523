"""Reading one referral (``GET /v1/referrals/{id}``): the sender's whole envelope or a
recipient's own part only, as JSON text."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.authz import Access, Relation
from app.db import core
from app.identity import Principal
from app.models.schemas import rfc3339
from app.models.tables import ReferralField, ReferralGrant, ReferralRecipient, WrappedKey
from app.services import audit
from app.services.audit import Action
from app.services.referrals.common import _ENCODE, _require
from app.services.referrals.store import _status_dict, _status_dicts

_SENDER_PARTS = {
    "fields": select(
        col(ReferralField.fid), col(ReferralField.disclosure), col(ReferralField.ciphertext)
    )
    .where(col(ReferralField.referral_id) == bindparam("rid"))
    .order_by(col(ReferralField.fid)),
    "grants": select(col(ReferralGrant.disclosure))
    .where(col(ReferralGrant.referral_id) == bindparam("rid"))
    .order_by(col(ReferralGrant.fid), col(ReferralGrant.recipient)),
    "requests": select(col(ReferralRecipient.request))
    .where(col(ReferralRecipient.referral_id) == bindparam("rid"))
    .order_by(col(ReferralRecipient.recipient)),
    "wrapped": select(
        col(WrappedKey.fid),
        col(WrappedKey.recipient),
        col(WrappedKey.kid),
        col(WrappedKey.wrapped_key),
    )
    .where(col(WrappedKey.referral_id) == bindparam("rid"))
    .order_by(col(WrappedKey.fid), col(WrappedKey.recipient)),
}


async def _sender_view(db: AsyncSession, referral_id: str) -> dict[str, Any]:
    p = {"rid": referral_id}
    conn = await core(db)
    fields = (await conn.execute(_SENDER_PARTS["fields"], p)).all()
    disclosures = [d for _, d, _ in fields]
    disclosures += list(await conn.scalars(_SENDER_PARTS["grants"], p))
    disclosures += list(await conn.scalars(_SENDER_PARTS["requests"], p))
    wrapped = [
        {"fid": f, "recipient": r, "kid": k, "wrapped_key": w}
        for f, r, k, w in await conn.execute(_SENDER_PARTS["wrapped"], p)
    ]
    return {
        "disclosures": disclosures,
        "ciphertexts": {fid: c for fid, _, c in fields},
        "wrapped_keys": wrapped,
        "statuses": (await _status_dicts(db, [referral_id]))[referral_id],
    }


def _recipient_view(access: Access, me: str) -> dict[str, Any]:
    """A recipient's part: its request, its active grants and their fields, its status."""
    own = access.own
    if own is None:
        raise RuntimeError("a recipient always has its row")
    granted = [g for _, g in sorted(access.fields.items())]
    disclosures = [own.request]
    disclosures += [g.disclosure for g in granted if g.disclosure is not None]
    disclosures += [
        g.field_disclosure for g in granted
        if g.field_disclosure is not None and g.wrapped_key is not None
    ]
    return {
        "disclosures": disclosures,
        "ciphertexts": {
            g.fid: g.ciphertext for g in granted
            if g.ciphertext is not None and g.wrapped_key is not None
        },
        "wrapped_keys": [
            {"fid": g.fid, "recipient": me, "kid": g.kid, "wrapped_key": g.wrapped_key}
            for g in granted if g.wrapped_key is not None
        ],
        "statuses": [_status_dict(
            me, own.status, own.reason, own.note, own.signed_at, own.signature, own.updated_at
        )],
    }


async def read(db: AsyncSession, who: Principal, referral_id: str) -> str:
    """The referral as the caller may see it, plus statuses, as JSON text."""
    access = await _require(db, who, referral_id, Action.REFERRAL_READ, content=True)
    referral = access.referral
    recipient = access.relation is Relation.RECIPIENT
    view = _recipient_view(access, who.agency_id) if recipient else await _sender_view(
        db, referral_id
    )
    served = sorted(view["ciphertexts"])
    grant_detail = {
        fid: {"purpose": g.purpose, "expires_at": rfc3339(g.expires_at) if g.expires_at else None}
        for fid, g in sorted(access.fields.items())
    }
    purposes = sorted({g.purpose for g in access.fields.values()})
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_READ,
        "referral",
        referral_id,
        subject_agency=referral.sender_agency,
        grant=grant_detail if recipient else None,
        purpose=",".join(purposes) if purposes else None,
        detail={"relation": str(access.relation), "fids": served, "version": referral.version},
    )
    if referral.manifest_json is None:
        raise RuntimeError("relation(content=True) reads the manifest")
    rest = _ENCODE({"signature": referral.signature, **view})
    # the stored manifest is the RFC 8785 text the signature covers: spliced in as it is
    return '{"manifest":' + referral.manifest_json + "," + rest[1:]
