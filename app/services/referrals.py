"""Referrals (Envelope v2): store envelopes, serve each caller its part, run the closed loop.

The server holds no key and never sees a field name: it checks an envelope's
shape, digests, hashes and signature (``app.crypto.envelope.check_envelope``),
that its grants name the recipients' current keys, that every recipient is
active and has a request and a grant, and that consents expire within the
configured maximum (refused, never shortened); then it stores the envelope in
a handful of set-based statements. Reads go through ``app.authz`` and serve a
recipient only its own disclosures. Every action writes its audit event (field
ids only) in the same transaction.

Statement budget of the hot paths (besides authentication and the audit
event): create reads the directory in one statement and writes the five
tables in one on PostgreSQL (one per table on SQLite); the referral's INSERT …
ON CONFLICT DO NOTHING is also the check that its id is new. An inbox page is
one statement (two for the sent box); a recipient's read is two; a status
change reads the poster's key, locks and reads in one, and writes in one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

import pydantic
from sqlalchemy import (
    BindParameter,
    DateTime,
    Integer,
    Text,
    and_,
    any_,
    bindparam,
    delete,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select
from sqlmodel import col

from app import authz, errors, vocab
from app.authz import Access, Relation, relation
from app.config import Settings
from app.crypto import envelope as env
from app.crypto.canonical import canonical_json
from app.crypto.encoding import EncodingError, b64url_decode
from app.crypto.wire import Amendment, EnvelopeIn, GrantValue, Manifest, RequestValue, StatusIn
from app.cursor import decode_time_id as _decode_cursor
from app.cursor import encode_time_id as _encode_cursor
from app.db import core
from app.dialect import POSTGRESQL, is_postgres
from app.identity import Principal
from app.models.schemas import Limits, ReferralSummary, StatusOut, rfc3339
from app.models.tables import (
    Agency,
    AgencyKey,
    IdempotencyRecord,
    Referral,
    ReferralField,
    ReferralGrant,
    ReferralRecipient,
    WrappedKey,
    table_of,
)
from app.models.types import UTCDateTime, utcnow
from app.models.webhook_schemas import EventType
from app.services import audit, webhooks
from app.services.audit import Action

TRANSITIONS = vocab.TRANSITIONS
MAX_NOTE_BYTES = 8192


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


# ---------------------------------------------------------------- directory


@dataclass(frozen=True)
class _Member:
    """A directory entry as create, amend and status need it."""

    status: str
    current: dict[str, tuple[str, str]]  # use -> (kid, public key) of its current keys


_DIRECTORY_ROWS = (
    select(
        col(Agency.id),
        col(Agency.status),
        col(AgencyKey.use),
        col(AgencyKey.kid),
        col(AgencyKey.public_key),
    )
    .outerjoin(
        AgencyKey,
        and_(
            col(AgencyKey.agency_id) == col(Agency.id),
            col(AgencyKey.status) == vocab.KeyStatus.CURRENT,
        ),
    )
)
# The agencies as one array parameter on PostgreSQL: one SQL text (and one prepared
# statement) whatever their number, where an expanding IN is re-rendered per execution.
_DIRECTORY_PG = _DIRECTORY_ROWS.where(
    col(Agency.id) == any_(bindparam("agency_ids", type_=postgresql.ARRAY(Text)))
)
_DIRECTORY = _DIRECTORY_ROWS.where(col(Agency.id).in_(bindparam("agency_ids", expanding=True)))


async def _directory(db: AsyncSession, agency_ids: Iterable[str]) -> dict[str, _Member]:
    """Status and current keys of the given agencies, in one statement."""
    conn = await core(db)
    stmt = _DIRECTORY_PG if conn.dialect.name == POSTGRESQL else _DIRECTORY
    rows = await conn.execute(stmt, {"agency_ids": sorted(set(agency_ids))})
    out: dict[str, _Member] = {}
    for agency_id, status, use, kid, public_key in rows:
        member = out.setdefault(agency_id, _Member(status, {}))
        if use is not None:
            member.current[use] = (kid, public_key)
    return out


def _sig_key(directory: Mapping[str, _Member], agency_id: str) -> bytes:
    member = directory.get(agency_id)
    key = member.current.get(vocab.KeyUse.SIG) if member is not None else None
    if key is None:
        raise errors.Unprocessable("the agency has no current signing key", slug="envelope/no-key")
    return b64url_decode(key[1], length=32)


def _check_recipients(recipients: Iterable[str], directory: Mapping[str, _Member]) -> None:
    for r in sorted(recipients):
        member = directory.get(r)
        if member is None:
            raise errors.Unprocessable(
                f"recipient {r} is not a member of the task force",
                slug="envelope/unknown-recipient",
            )
        if member.status != vocab.AgencyStatus.ACTIVE:
            raise errors.Unprocessable(
                f"recipient {r} is not active ({member.status})",
                slug="envelope/inactive-recipient",
            )


def _check_kids(grants: Iterable[GrantValue], directory: Mapping[str, _Member]) -> None:
    for g in grants:
        member = directory.get(g.recipient)
        key = member.current.get(vocab.KeyUse.ENC) if member is not None else None
        if key is None or key[0] != g.kid:
            raise errors.Unprocessable(
                f"the grant of field {g.fid} to {g.recipient} names kid {g.kid}, which is not "
                "that agency's current encryption key; refresh its keys and seal again",
                slug="envelope/stale-kid",
            )


def _check_expiry(grants: Iterable[GrantValue], now: datetime, settings: Settings) -> None:
    """Every consent expires in the future and within the maximum: refused, never shortened."""
    days = settings.referrals.max_consent_days
    limit = now + timedelta(days=days)
    for g in grants:
        if g.expires_at is None:
            continue
        expires = parse_time(g.expires_at)
        if expires <= now:
            raise errors.Unprocessable(
                f"the consent for field {g.fid} to {g.recipient} expired at {g.expires_at}",
                slug="envelope/expired-consent",
            )
        if expires > limit:
            raise errors.Unprocessable(
                f"the consent for field {g.fid} to {g.recipient} runs to {g.expires_at}, beyond "
                f"the maximum of {days} days (until {rfc3339(limit)}); the survivor's consent "
                "must be renewed within that time",
                slug="envelope/consent-too-long",
                extra={"max_consent_days": days},
            )


def _check_clock(created_at: str, now: datetime, settings: Settings) -> None:
    skew = settings.referrals.max_clock_skew
    if abs((parse_time(created_at) - now).total_seconds()) > skew:
        raise errors.Unprocessable(
            f"manifest.created_at is more than {skew} seconds from the server's clock "
            f"({rfc3339(now)}); check this computer's clock",
            slug="envelope/clock-skew",
        )


# ---------------------------------------------------------------- rows


def _grant_row(referral_id: str, d: env.Disclosed, now: datetime) -> dict[str, Any]:
    g = d.value
    assert isinstance(g, GrantValue)  # noqa: S101 (grants come from the grant map)
    return {
        "referral_id": referral_id,
        "fid": g.fid,
        "recipient": g.recipient,
        "disclosure": d.disclosure,
        "kid": g.kid,
        "purpose": g.purpose,
        "expires_at": parse_time(g.expires_at) if g.expires_at else None,
        "created_at": now,
        "revoked_at": None,
    }


def _recipient_row(referral_id: str, d: env.Disclosed, now: datetime) -> dict[str, Any]:
    r = d.value
    assert isinstance(r, RequestValue)  # noqa: S101 (requests come from the request map)
    return {
        "referral_id": referral_id,
        "recipient": r.recipient,
        "received_at": now,
        "request": d.disclosure,
        "request_json": canonical_json(r.model_dump()).decode("utf-8"),
        "urgency": r.urgency,
        "status": vocab.TaskStatus.REQUESTED,
        "reason": None,
        "note": None,
        "signed_at": None,
        "signature": None,
        "updated_at": now,
    }


def _wrapped_rows(referral_id: str, wrapped: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "referral_id": referral_id,
            "fid": w.fid,
            "recipient": w.recipient,
            "kid": w.kid,
            "wrapped_key": w.wrapped_key,
        }
        for w in wrapped
    ]


def _text_array(name: str) -> BindParameter[Any]:
    return bindparam(name, type_=postgresql.ARRAY(Text))


# A new referral in one statement on PostgreSQL: the referral row (ON CONFLICT DO
# NOTHING, so an existing id inserts nothing anywhere and returns no row) and its
# fields, recipients, grants and wrapped keys from arrays. Foreign keys are checked
# at the end of the statement, when the referral row exists.
_PG_STORE = text(
    """
WITH r AS (
    INSERT INTO referral (id, sender_agency, sender_kid, created_at, received_at, version,
                          manifest_json, signature, withdrawn_at, purged_at)
    VALUES (:id, :sender_agency, :sender_kid, :created_at, :received_at, 1,
            :manifest_json, :signature, NULL, NULL)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), f AS (
    INSERT INTO referral_field (referral_id, fid, disclosure, ciphertext)
    SELECT r.id, u.fid, u.disclosure, u.ciphertext
    FROM r, unnest(CAST(:f_fid AS text[]), CAST(:f_disclosure AS text[]),
                   CAST(:f_ciphertext AS text[])) AS u(fid, disclosure, ciphertext)
), rr AS (
    INSERT INTO referral_recipient (referral_id, recipient, received_at, request, request_json,
                                    urgency, status, updated_at)
    SELECT r.id, u.recipient, :received_at, u.request, u.request_json, u.urgency, 'requested',
           :received_at
    FROM r, unnest(CAST(:r_recipient AS text[]), CAST(:r_request AS text[]),
                   CAST(:r_request_json AS text[]), CAST(:r_urgency AS text[]))
         AS u(recipient, request, request_json, urgency)
), g AS (
    INSERT INTO referral_grant (referral_id, fid, recipient, disclosure, kid, purpose,
                                expires_at, created_at, revoked_at)
    SELECT r.id, u.fid, u.recipient, u.disclosure, u.kid, u.purpose, u.expires_at,
           :received_at, NULL
    FROM r, unnest(CAST(:g_fid AS text[]), CAST(:g_recipient AS text[]),
                   CAST(:g_disclosure AS text[]), CAST(:g_kid AS text[]),
                   CAST(:g_purpose AS text[]), CAST(:g_expires_at AS timestamptz[]))
         AS u(fid, recipient, disclosure, kid, purpose, expires_at)
), w AS (
    INSERT INTO wrapped_key (referral_id, fid, recipient, kid, wrapped_key)
    SELECT r.id, u.fid, u.recipient, u.kid, u.wrapped_key
    FROM r, unnest(CAST(:w_fid AS text[]), CAST(:w_recipient AS text[]),
                   CAST(:w_kid AS text[]), CAST(:w_wrapped_key AS text[]))
         AS u(fid, recipient, kid, wrapped_key)
)
SELECT id FROM r
"""
).bindparams(
    bindparam("received_at", type_=UTCDateTime()),
    bindparam("g_expires_at", type_=postgresql.ARRAY(DateTime(timezone=True))),
    *(
        _text_array(name)
        for name in (
            "f_fid", "f_disclosure", "f_ciphertext",
            "r_recipient", "r_request", "r_request_json", "r_urgency",
            "g_fid", "g_recipient", "g_disclosure", "g_kid", "g_purpose",
            "w_fid", "w_recipient", "w_kid", "w_wrapped_key",
        )
    ),
)
_FIELD_COLS = ("fid", "disclosure", "ciphertext")
_RECIPIENT_COLS = ("recipient", "request", "request_json", "urgency")
_GRANT_COLS = ("fid", "recipient", "disclosure", "kid", "purpose", "expires_at")
_WRAPPED_COLS = ("fid", "recipient", "kid", "wrapped_key")


@dataclass(frozen=True)
class _Rows:
    referral: dict[str, Any]
    fields: list[dict[str, Any]]
    recipients: list[dict[str, Any]]
    grants: list[dict[str, Any]]
    wrapped: list[dict[str, Any]]


def _arrays(prefix: str, rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> dict[str, Any]:
    return {f"{prefix}_{c}": [r[c] for r in rows] for c in cols}


async def _store(db: AsyncSession, rows: _Rows) -> bool:
    """Insert a new referral and its rows; False (and nothing written) when its id exists.

    "Is it new?" and "store it" are one statement, so a concurrent duplicate waits
    for the first and then answers 409 instead of failing on the key. PostgreSQL
    writes all five tables in that statement (``_PG_STORE``); SQLite inserts the
    referral, then one executemany per table.
    """
    # the bind of the referral tables, not .bind: a session bound per table (binds=...)
    # has no .bind
    if is_postgres(db, Referral):
        stored = await db.scalar(
            _PG_STORE,
            {
                **rows.referral,
                **_arrays("f", rows.fields, _FIELD_COLS),
                **_arrays("r", rows.recipients, _RECIPIENT_COLS),
                **_arrays("g", rows.grants, _GRANT_COLS),
                **_arrays("w", rows.wrapped, _WRAPPED_COLS),
            },
        )
        return stored is not None
    table = table_of(Referral)
    stored = await db.scalar(
        sqlite.insert(table)
        .values(**rows.referral, version=1, withdrawn_at=None, purged_at=None)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(table.c.id)
    )
    if stored is None:
        return False
    await db.execute(insert(table_of(ReferralField)), rows.fields)
    await db.execute(insert(table_of(ReferralRecipient)), rows.recipients)
    await db.execute(insert(table_of(ReferralGrant)), rows.grants)
    await db.execute(insert(table_of(WrappedKey)), rows.wrapped)
    return True


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


def _parsed_disclosures(disclosures: Sequence[str]) -> list[env.Disclosed]:
    """Every disclosure parsed once (422 on the first bad one)."""
    try:
        return [env.parse_disclosure(item) for item in disclosures]
    except env.EnvelopeError as exc:
        raise _invalid(exc) from None


def _named_in(parsed: Iterable[env.Disclosed]) -> set[str]:
    """Agencies named by grant and request disclosures (for the one directory read)."""
    return {d.value.recipient for d in parsed if isinstance(d.value, GrantValue | RequestValue)}


def _named_agencies(disclosures: Sequence[str]) -> set[str]:
    """Agencies named by grant and request disclosures (for the one directory read)."""
    return _named_in(_parsed_disclosures(disclosures))


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


async def create(
    db: AsyncSession,
    who: Principal,
    raw: Mapping[str, Any],
    *,
    settings: Settings,
    idempotency_key: str | None,
) -> tuple[int, dict[str, Any]]:
    """Store a new referral; returns (status code, response body)."""
    if idempotency_key is not None:
        replayed = await replay_idempotent(db, who, idempotency_key, raw)
        if replayed is not None:
            return replayed
    body: EnvelopeIn = _validated(EnvelopeIn, raw)
    manifest = body.manifest
    await _refuse_foreign_sender(db, who, Action.REFERRAL_CREATE, manifest)
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
    _check_clock(manifest.created_at, now, settings)
    _check_expiry(grants, now, settings)
    referral_id = manifest.referral_id
    rows = _Rows(
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
    if not await _store(db, rows):
        # A concurrent re-post of the same envelope with the same key (a client retrying
        # while its first request is still in flight) waited for the first to commit:
        # it is answered like the first.
        if idempotency_key is not None:
            replayed = await replay_idempotent(db, who, idempotency_key, raw)
            if replayed is not None:
                return replayed
        raise errors.Conflict("a referral with this referral_id exists", slug="referral-exists")
    recipients = sorted(checked.recipients)
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_CREATE,
        "referral",
        referral_id,
        subject_agency=who.agency_id,
        detail={
            "recipients": recipients,
            "fids": sorted(checked.fields),
            "grants": _grant_detail(g for g in grants if g.recipient != who.agency_id),
        },
    )
    requests = {
        row["recipient"]: json.loads(row["request_json"]) for row in rows.recipients
    }
    await webhooks.enqueue(
        db,
        EventType.REFERRAL_RECEIVED,
        referral_id,
        {rid: {"sender_agency": who.agency_id, "request": requests[rid]} for rid in recipients},
    )
    response = ReferralSummary(
        referral_id=referral_id,
        sender_agency=who.agency_id,
        created_at=manifest.created_at,
        version=1,
        statuses=[StatusOut(recipient=rid, status=vocab.TaskStatus.REQUESTED, updated_at=now)
                  for rid in recipients],
    ).model_dump(mode="json")
    if idempotency_key is not None:
        db.add(
            IdempotencyRecord(
                client_id=who.client_id,
                key=idempotency_key,
                request_sha256=_request_hash(raw),
                status_code=201,
                response_json=json.dumps(response),
            )
        )
        await db.flush()
    return 201, response


def _grant_detail(grants: Iterable[GrantValue]) -> list[dict[str, Any]]:
    """Grants as audit detail: field ids, recipients, purposes and expiries; never names."""
    return [
        {"fid": g.fid, "recipient": g.recipient, "purpose": g.purpose, "expires_at": g.expires_at}
        for g in sorted(grants, key=lambda g: (g.fid, g.recipient))
    ]


# ---------------------------------------------------------------- list


_STATUS_COLUMNS = (
    col(ReferralRecipient.recipient),
    col(ReferralRecipient.status),
    col(ReferralRecipient.reason),
    col(ReferralRecipient.note),
    col(ReferralRecipient.signed_at),
    col(ReferralRecipient.signature),
    col(ReferralRecipient.updated_at),
)
_STATUSES = (
    select(col(ReferralRecipient.referral_id), *_STATUS_COLUMNS)
    .where(col(ReferralRecipient.referral_id).in_(bindparam("referral_ids", expanding=True)))
    .order_by(col(ReferralRecipient.recipient))
)


def _status_dict(
    recipient: str, status: str, reason: str | None, note: str | None,
    signed_at: str | None, signature: str | None, updated_at: datetime,
) -> dict[str, Any]:
    """A ``StatusOut`` as JSON, without building the model."""
    return {
        "recipient": recipient,
        "status": status,
        "reason": reason,
        "note": note,
        "signed_at": signed_at,
        "signature": signature,
        "updated_at": rfc3339(updated_at),
    }


async def _status_dicts(
    db: AsyncSession, referral_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Every recipient's status of each referral, by recipient, in their JSON form."""
    out: dict[str, list[dict[str, Any]]] = {r: [] for r in referral_ids}
    if referral_ids:
        conn = await core(db)
        for row in await conn.execute(_STATUSES, {"referral_ids": list(referral_ids)}):
            # the referral's id, then _STATUS_COLUMNS
            out[row[0]].append(_status_dict(*row[1:]))
    return out


@cache
def _page_query(
    box: str, law_enforcement: bool, urgency: bool, since: bool, status: bool, cursor: bool
) -> Select[*tuple[Any, ...]]:
    """An inbox page statement for one combination of filters, built once.

    Parameters: those of ``authz.visible_referrals``, ``:page_rows`` (the LIMIT) and
    ``:urgency``, ``:since``, ``:status_filter``, ``:after_ts`` and ``:after_id`` for the
    filters present.
    """
    stmt = authz.visible_referrals(box, law_enforcement)
    received_at = stmt.selected_columns.received_at
    # The received box is driven from the caller's referral_recipient rows: key on them.
    key = col(Referral.id) if box == "sent" else col(ReferralRecipient.referral_id)

    def where_recipient(*conditions: Any) -> Any:
        if box == "received":
            return and_(*conditions)
        return (
            select(col(ReferralRecipient.referral_id))
            .where(col(ReferralRecipient.referral_id) == col(Referral.id), *conditions)
            .exists()
        )

    if urgency:
        stmt = stmt.where(where_recipient(col(ReferralRecipient.urgency) == bindparam("urgency")))
    if since:
        stmt = stmt.where(received_at >= bindparam("since", type_=UTCDateTime()))
    if status:
        stmt = stmt.where(
            where_recipient(col(ReferralRecipient.status) == bindparam("status_filter"))
        )
    if cursor:
        after = tuple_(bindparam("after_ts", type_=UTCDateTime()), bindparam("after_id"))
        stmt = stmt.where(tuple_(received_at, key) < after)
    # the page size is a parameter too (``:page_rows``), so no statement is built per request
    return stmt.order_by(received_at.desc(), key.desc()).limit(
        bindparam("page_rows", type_=Integer())
    )


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _summary(r: Any, statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """The members of a list item both boxes share (``ReferralSummary`` less ``request``)."""
    return {
        "referral_id": r.id,
        "sender_agency": r.sender_agency,
        "created_at": r.created_at,
        "version": r.version,
        "statuses": statuses,
        "withdrawn": r.withdrawn_at is not None,
    }


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
) -> tuple[list[str], str | None]:
    """One page of the caller's sent or received box, newest first.

    Items are ``ReferralSummary`` objects as JSON text, built directly from the
    rows (a page is up to 200 of them). A recipient's item carries its own
    request (decoded when it was stored) and its own status only.
    """
    values = authz.params(who, utcnow())
    values["page_rows"] = limit + 1
    if cursor:
        values["after_ts"], values["after_id"] = _decode_cursor(cursor)
    if urgency:
        values["urgency"] = urgency
    if since:
        values["since"] = since
    if status:
        values["status_filter"] = status
    stmt = _page_query(
        box,
        who.agency_kind == vocab.AgencyKind.LAW_ENFORCEMENT,
        bool(urgency),
        bool(since),
        bool(status),
        bool(cursor),
    )
    rows = (await (await core(db)).execute(stmt, values)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    if box == "sent":
        statuses = await _status_dicts(db, [r.id for r in rows])
        items = [_ENCODE({**_summary(r, statuses[r.id]), "request": None}) for r in rows]
    else:
        items = [
            # the stored request is canonical JSON we wrote: spliced in, not re-encoded
            _ENCODE(_summary(r, [_status_dict(
                who.agency_id, r.status, r.reason, r.note, r.signed_at, r.status_signature,
                r.updated_at,
            )]))[:-1] + ',"request":' + r.request_json + "}"
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


# ---------------------------------------------------------------- lifecycle


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
    """Store a recipient's signed status change (verified with its current signing key)."""
    body: StatusIn = _validated(StatusIn, raw)
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
    _check_note(body.note)
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
    now = utcnow()
    skew = settings.referrals.max_clock_skew
    if abs((parse_time(body.signed_at) - now).total_seconds()) > skew:
        raise errors.Unprocessable(
            f"signed_at is more than {skew} seconds from the server's clock ({rfc3339(now)})",
            slug="status/clock-skew",
        )
    row = access.own  # locked by relation(lock_own=True) until the transaction ends
    if row is None:  # a recipient always has its row
        raise await _not_found(db, who, Action.REFERRAL_STATUS, referral_id)
    own_row = {"row_referral_id": referral_id, "row_recipient": who.agency_id}
    same = body.status == row.status and body.reason == row.reason
    if not same:
        # a stored status is a TaskStatus value (a StrEnum: the str finds its key)
        if body.status not in TRANSITIONS.get(cast(vocab.TaskStatus, row.status), frozenset()):
            raise errors.Conflict(
                f"a referral that is {row.status} cannot become {body.status}",
                slug="invalid-transition",
            )
        if body.status == "rejected" and not body.reason:
            raise errors.Unprocessable("rejected needs a reason code", slug="reason-required")
    # Idempotent: the same status again changes nothing, except a new note.
    changed = not same or (body.note is not None and body.note != row.note)
    updated_at = now if changed else row.updated_at
    if changed:
        await (await core(db)).execute(_SET_STATUS, {
            **own_row,
            "new_status": body.status,
            "new_reason": body.reason,
            "new_note": body.note,
            "new_signed_at": body.signed_at,
            "new_signature": body.signature,
            "new_updated_at": updated_at,
        })
    await audit.record(
        db,
        who.actor,
        Action.REFERRAL_STATUS,
        "referral",
        referral_id,
        subject_agency=access.referral.sender_agency,
        detail={
            "from": row.status,
            "to": body.status,
            "reason": body.reason,
            "note": body.note is not None,
            "unchanged": not changed,
        },
    )
    if not same:
        await webhooks.enqueue(
            db,
            EventType.REFERRAL_STATUS_CHANGED,
            referral_id,
            {
                access.referral.sender_agency: {
                    "recipient": who.agency_id,
                    "status": body.status,
                    "previous_status": row.status,
                    "reason": body.reason,
                }
            },
        )
    if not changed:
        return StatusOut(
            recipient=who.agency_id, status=row.status, reason=row.reason, note=row.note,
            signed_at=row.signed_at, signature=row.signature, updated_at=row.updated_at,
        )
    return StatusOut(
        recipient=who.agency_id, status=body.status, reason=body.reason, note=body.note,
        signed_at=body.signed_at, signature=body.signature, updated_at=updated_at,
    )


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
    """Add consent with a new manifest version; the loser of a race gets 409, nothing lost."""
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
    directory = await _directory(db, {who.agency_id, *_named_agencies(body.disclosures)})
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
        )
    except env.EnvelopeError as exc:
        raise _invalid(exc) from None
    grants = [d.value for d in checked.grants.values() if isinstance(d.value, GrantValue)]
    _check_recipients({g.recipient for g in grants}, directory)
    _check_kids(grants, directory)
    now = utcnow()
    _check_expiry(grants, now, settings)
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
    return {
        "referral_id": referral_id,
        "version": body.manifest.version,
        "grants": [d.disclosure for d in checked.grants.values()],
        "new_recipients": new_recipients,
    }


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
