"""Agencies, their keys and their API clients (the task-force directory).

Key registration, rotation and revocation are audit events whose
``resource_id`` is the kid and whose detail names the agency and use, so the
log binds each kid (a hash of the public key) to its agency: key transparency.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlmodel import col

from app import errors
from app.auth import forget_principals
from app.crypto import keys
from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode
from app.models.schemas import AgencyOut, ClientOut, KeyOut
from app.models.tables import Agency, AgencyKey, ApiClient
from app.models.types import utcnow
from app.services import audit
from app.services.audit import Action, Actor

KINDS = (
    "social_service",
    "shelter",
    "legal_aid",
    "medical",
    "law_enforcement",
    "ngo",
    "government",
)
ROLES = ("caseworker", "liaison", "auditor", "admin")


def _public_key(value: str, what: str) -> bytes:
    try:
        return b64url_decode(value, length=32)
    except EncodingError as exc:
        raise errors.Unprocessable(
            f"{what} must be base64url of a raw 32-byte public key: {exc}", slug="invalid-key"
        ) from None


def to_out(agency: Agency, agency_keys: Sequence[AgencyKey]) -> AgencyOut:
    return AgencyOut(
        id=agency.id,
        name=agency.name,
        kind=agency.kind,
        status=agency.status,
        keys=[
            KeyOut(
                kid=k.kid,
                use=k.use,
                public_key=k.public_key,
                status=k.status,
                created_at=k.created_at,
            )
            for k in sorted(agency_keys, key=lambda k: (k.use, k.created_at))
        ],
    )


async def _keys_of(db: AsyncSession, agency_ids: Sequence[str]) -> dict[str, list[AgencyKey]]:
    out: dict[str, list[AgencyKey]] = {a: [] for a in agency_ids}
    if agency_ids:
        rows = await db.scalars(select(AgencyKey).where(col(AgencyKey.agency_id).in_(agency_ids)))
        for k in rows:
            out[k.agency_id].append(k)
    return out


async def get(db: AsyncSession, agency_id: str) -> AgencyOut | None:
    agency = await db.get(Agency, agency_id)
    if agency is None:
        return None
    return to_out(agency, (await _keys_of(db, [agency_id]))[agency_id])


async def list_page(
    db: AsyncSession, *, limit: int, cursor: str | None
) -> tuple[list[AgencyOut], str | None]:
    stmt = select(Agency).order_by(col(Agency.id)).limit(limit + 1)
    if cursor:
        stmt = stmt.where(col(Agency.id) > cursor)
    rows = list(await db.scalars(stmt))
    more = len(rows) > limit
    rows = rows[:limit]
    by_agency = await _keys_of(db, [a.id for a in rows])
    return [to_out(a, by_agency[a.id]) for a in rows], (rows[-1].id if more else None)


async def _register_key(
    db: AsyncSession, actor: Actor, agency_id: str, use: str, raw: bytes, action: Action
) -> AgencyKey:
    kid = keys.kid(raw)
    if await db.get(AgencyKey, kid) is not None:
        raise errors.Conflict(f"the {use} key {kid} is already registered", slug="key-exists")
    key = AgencyKey(
        kid=kid, agency_id=agency_id, use=use, public_key=b64url_encode(raw), status="current"
    )
    db.add(key)
    await audit.record(
        db,
        actor,
        action,
        "key",
        kid,
        subject_agency=agency_id,
        detail={"agency": agency_id, "use": use, "kid": kid},
    )
    return key


async def create(
    db: AsyncSession, actor: Actor, *, name: str, kind: str, enc_key: str, sign_key: str
) -> AgencyOut:
    if kind not in KINDS:
        raise errors.Unprocessable(f"kind must be one of {', '.join(KINDS)}", slug="invalid-kind")
    enc, sig = _public_key(enc_key, "enc_key"), _public_key(sign_key, "sign_key")
    if enc == sig:
        raise errors.Unprocessable("enc_key and sign_key must differ", slug="invalid-key")
    agency = Agency(id=str(uuid.uuid4()), name=name, kind=kind, status="active")
    db.add(agency)
    await db.flush()
    await audit.record(
        db,
        actor,
        Action.AGENCY_CREATE,
        "agency",
        agency.id,
        subject_agency=agency.id,
        detail={"kind": kind},
    )
    k1 = await _register_key(db, actor, agency.id, "enc", enc, Action.KEY_REGISTER)
    k2 = await _register_key(db, actor, agency.id, "sig", sig, Action.KEY_REGISTER)
    await db.flush()
    return to_out(agency, [k1, k2])


def no_such_agency(agency_id: str) -> str:
    """The 404 detail for an unknown agency id: which id, and where to find the right one."""
    return (f"no such agency: {agency_id!r} is not an agency id in this gateway's directory; "
            "`refgate agencies` lists every agency, `refgate find` searches them by service "
            "and place")


async def _require(db: AsyncSession, agency_id: str) -> Agency:
    agency = await db.get(Agency, agency_id)
    if agency is None:
        raise errors.NotFound(no_such_agency(agency_id))
    return agency


async def rotate_keys(
    db: AsyncSession, actor: Actor, agency_id: str, *, enc_key: str | None, sign_key: str | None
) -> AgencyOut:
    agency = await _require(db, agency_id)
    if not enc_key and not sign_key:
        raise errors.Unprocessable("give enc_key, sign_key or both", slug="invalid-key")
    now = utcnow()
    for use, value in (("enc", enc_key), ("sig", sign_key)):
        if not value:
            continue
        raw = _public_key(value, f"{use} key")
        await db.execute(
            update(AgencyKey)
            .where(
                col(AgencyKey.agency_id) == agency_id,
                col(AgencyKey.use) == use,
                col(AgencyKey.status) == "current",
            )
            .values(status="retired", retired_at=now)
        )
        await _register_key(db, actor, agency_id, use, raw, Action.KEY_ROTATE)
    await db.flush()
    return to_out(agency, (await _keys_of(db, [agency_id]))[agency_id])


async def set_status(db: AsyncSession, actor: Actor, agency_id: str, status: str) -> AgencyOut:
    """Suspend or reactivate. Drops this process's cache of client statuses now and
    again at commit (``app.auth``), so the change applies to the next request here."""
    agency = await _require(db, agency_id)
    previous = agency.status
    agency.status = status
    await _statuses_changed(db)
    await audit.record(
        db,
        actor,
        Action.AGENCY_SUSPEND,
        "agency",
        agency_id,
        subject_agency=agency_id,
        detail={"from": previous, "to": status},
    )
    return to_out(agency, (await _keys_of(db, [agency_id]))[agency_id])


async def _statuses_changed(db: AsyncSession) -> None:
    """After a client or agency status change: drop this process's cache of client
    statuses (``app.auth``) now and again at commit, so no request here reads the old."""
    await db.flush()
    forget_principals()
    event.listen(db.sync_session, "after_commit", _forget_on_commit, once=True)


def _forget_on_commit(_session: Session) -> None:
    forget_principals()


async def create_client(
    db: AsyncSession, actor: Actor, agency_id: str, *, role: str, auth_key: str
) -> ClientOut:
    await _require(db, agency_id)
    if role not in ROLES:
        raise errors.Unprocessable(f"role must be one of {', '.join(ROLES)}", slug="invalid-role")
    raw = _public_key(auth_key, "auth_key")
    client = ApiClient(
        client_id=str(uuid.uuid4()),
        agency_id=agency_id,
        role=role,
        auth_public_key=b64url_encode(raw),
        auth_kid=keys.kid(raw),
        status="active",
    )
    db.add(client)
    await db.flush()
    await audit.record(
        db,
        actor,
        Action.CLIENT_CREATE,
        "client",
        client.client_id,
        subject_agency=agency_id,
        detail={"role": role, "auth_kid": client.auth_kid},
    )
    return ClientOut.model_validate(client, from_attributes=True)


async def revoke_client(
    db: AsyncSession, actor: Actor, agency_id: str, client_id: str
) -> ClientOut:
    """Revoke one API client for good (a lost laptop, a leaked key), leaving the
    agency and its other clients alone. It gets no new token, and a token it holds
    is refused from the next request in this worker and within ``app.auth``'s
    ``STATUS_TTL`` in the others. Revoking twice changes nothing more; a revoked
    client is not reactivated: register a new one."""
    await _require(db, agency_id)
    client = await db.get(ApiClient, client_id)
    if client is None or client.agency_id != agency_id:
        raise errors.NotFound("no such client of this agency")
    previous = client.status
    if previous != "revoked":
        client.status = "revoked"
        await _statuses_changed(db)
    await audit.record(
        db,
        actor,
        Action.CLIENT_REVOKE,
        "client",
        client_id,
        subject_agency=agency_id,
        detail={"from": previous, "to": "revoked"},
    )
    return ClientOut.model_validate(client, from_attributes=True)


async def current_keys(db: AsyncSession, agency_ids: Sequence[str]) -> dict[tuple[str, str], str]:
    """{(agency_id, use): current kid} for the given agencies."""
    rows = await db.execute(
        select(col(AgencyKey.agency_id), col(AgencyKey.use), col(AgencyKey.kid)).where(
            col(AgencyKey.agency_id).in_(agency_ids),
            col(AgencyKey.status) == "current",
        )
    )
    return {(a, u): k for a, u, k in rows}
