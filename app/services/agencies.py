"""Agencies, their keys and their API clients (the task-force directory).

Key registration, rotation and revocation are audit events whose
``resource_id`` is the kid and whose detail names the agency and use, so the
log binds each kid (a hash of the public key) to its agency: key transparency.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlmodel import col

from app import errors
from app.crypto import keys
from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode
from app.identity import Actor
from app.models.schemas import AgencyList, AgencyOut, ClientOut, KeyOut
from app.models.tables import Agency, AgencyKey, ApiClient
from app.models.types import utcnow
from app.services import audit
from app.services.audit import Action
from app.vocab import AgencyKind, AgencyStatus, ClientStatus, KeyStatus, KeyUse, Role

KINDS = tuple(AgencyKind)
ROLES = tuple(Role)

_status_hooks: list[Callable[[], None]] = []


def on_status_change(hook: Callable[[], None]) -> None:
    """Call ``hook`` after every client or agency status change in this process, when
    it is made and again when it commits (``app.auth`` drops its status cache so)."""
    if hook not in _status_hooks:
        _status_hooks.append(hook)


def _notify_status_change(_session: Session | None = None) -> None:
    for hook in _status_hooks:
        hook()


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


async def read(db: AsyncSession, actor: Actor, agency_id: str) -> AgencyOut:
    """One directory entry (404 for an unknown id), audited as ``agency:read``."""
    found = await get(db, agency_id)
    if found is None:
        raise errors.NotFound(no_such_agency(agency_id))
    await audit.record(
        db, actor, Action.AGENCY_READ, "agency", agency_id, subject_agency=agency_id
    )
    return found


async def list_page(
    db: AsyncSession, actor: Actor, *, limit: int, cursor: str | None
) -> AgencyList:
    """A page of the directory in id order (the cursor is the last id), audited as
    ``agency:list``."""
    stmt = select(Agency).order_by(col(Agency.id)).limit(limit + 1)
    if cursor:
        stmt = stmt.where(col(Agency.id) > cursor)
    rows = list(await db.scalars(stmt))
    more = len(rows) > limit
    rows = rows[:limit]
    by_agency = await _keys_of(db, [a.id for a in rows])
    items = [to_out(a, by_agency[a.id]) for a in rows]
    await audit.record(
        db, actor, Action.AGENCY_LIST, "agency", None, detail={"count": len(items)}
    )
    return AgencyList(items=items, next_cursor=rows[-1].id if more else None)


async def _register_key(
    db: AsyncSession, actor: Actor, agency_id: str, use: str, raw: bytes, action: Action
) -> AgencyKey:
    kid = keys.kid(raw)
    if await db.get(AgencyKey, kid) is not None:
        raise errors.Conflict(f"the {use} key {kid} is already registered", slug="key-exists")
    key = AgencyKey(
        kid=kid,
        agency_id=agency_id,
        use=use,
        public_key=b64url_encode(raw),
        status=KeyStatus.CURRENT,
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
    agency = Agency(id=str(uuid.uuid4()), name=name, kind=kind, status=AgencyStatus.ACTIVE)
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
    k1 = await _register_key(db, actor, agency.id, KeyUse.ENC, enc, Action.KEY_REGISTER)
    k2 = await _register_key(db, actor, agency.id, KeyUse.SIG, sig, Action.KEY_REGISTER)
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
    raws = {
        use: _public_key(value, f"{use} key")
        for use, value in ((KeyUse.ENC, enc_key), (KeyUse.SIG, sign_key))
        if value
    }
    if raws.get(KeyUse.ENC) is not None and raws.get(KeyUse.ENC) == raws.get(KeyUse.SIG):
        # one key for both uses: the same kid twice, refused like onboarding refuses it
        raise errors.Unprocessable("enc_key and sign_key must differ", slug="invalid-key")
    now = utcnow()
    for use, raw in raws.items():
        await db.execute(
            update(AgencyKey)
            .where(
                col(AgencyKey.agency_id) == agency_id,
                col(AgencyKey.use) == use,
                col(AgencyKey.status) == KeyStatus.CURRENT,
            )
            .values(status=KeyStatus.RETIRED, retired_at=now)
        )
        await _register_key(db, actor, agency_id, use, raw, Action.KEY_ROTATE)
    await db.flush()
    return to_out(agency, (await _keys_of(db, [agency_id]))[agency_id])


async def set_status(
    db: AsyncSession, actor: Actor, agency_id: str, status: AgencyStatus
) -> AgencyOut:
    """Suspend or reactivate. Runs the status-change hooks now and again at commit
    (``app.auth`` drops its cache of client statuses), so the change applies to the
    next request here."""
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
    """After a client or agency status change: run the status-change hooks now and
    again at commit (``app.auth`` drops its status cache), so no request here reads
    the old."""
    await db.flush()
    _notify_status_change()
    event.listen(db.sync_session, "after_commit", _notify_status_change, once=True)


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
        status=ClientStatus.ACTIVE,
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
    if previous != ClientStatus.REVOKED:
        client.status = ClientStatus.REVOKED
        await _statuses_changed(db)
    await audit.record(
        db,
        actor,
        Action.CLIENT_REVOKE,
        "client",
        client_id,
        subject_agency=agency_id,
        detail={"from": previous, "to": ClientStatus.REVOKED.value},
    )
    return ClientOut.model_validate(client, from_attributes=True)
