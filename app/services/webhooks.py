"""Webhooks: subscriptions, the transactional outbox and the dispatcher.

Guarantees:
- **Outbox.** ``enqueue()`` inserts delivery rows in the caller's transaction:
  a committed action always has its notifications and a rolled-back one never
  notifies. Payloads carry ids and routing metadata, never referral content.
- **Visibility.** A referral event goes only to agencies that may see the
  referral (``visible_only``): a law-enforcement agency hears of a referral
  only while it holds an active grant, exactly as ``app.authz`` shows it.
  ``consent.revoked`` is the exception: the recipient that lost access must hear
  of it to purge its copy.
- **Signing** per Standard Webhooks: ``webhook-id`` (the delivery id, the same
  on every attempt and on a replay), ``webhook-timestamp`` (Unix seconds of the
  attempt) and ``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(secret,
  f"{id}.{timestamp}.{body}")). After a rotation the previous secret signs too,
  space-separated, for ``webhooks.secret_grace`` seconds.
- **Secrets sealed at rest.** The server must keep each signing secret to
  sign with it, so it is stored sealed (XChaCha20-Poly1305, bound to the
  webhook's id) under a key in the data directory (``webhook-secrets.key``,
  ``REFGATE_KEYS__WEBHOOK_KEY_FILE``), not in the database: a dump alone
  cannot forge deliveries. A secret stored in clear by an earlier version is
  still read and is sealed at its next rotation.
- **At least once.** The dispatcher claims due rows by pushing their
  ``next_attempt_at`` forward by a lease (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL), commits, sends outside any transaction, then records the result
  only if the row is still the attempt it claimed. A crash mid-send retries
  after the lease. Failures back off exponentially with jitter; after
  ``max_attempts`` the delivery is dead-lettered until replayed.
- **One dispatcher per deployment**: the runner holds a PostgreSQL advisory
  lock (its own key, not the sequencer's); on SQLite it runs in-process.
- **SSRF.** A target must be https and resolve only to public addresses, unless
  ``webhooks.allow_private_targets``. It is checked at subscription and again at
  each attempt, and the connection goes to the address that was checked (no
  second DNS lookup that a rebinding attacker could answer differently).
  Redirects are not followed and response bodies are not read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import random
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import httpx
import nacl.exceptions
import nacl.secret
from sqlalchemy import (
    CursorResult,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

from app import __version__, errors
from app.authz import active_grant
from app.config import Settings, WebhookSettings
from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode
from app.crypto.webhook_signature import new_secret, sign
from app.cursor import decode_time_id, encode_time_id
from app.dialect import is_postgres
from app.identity import Principal
from app.models.schemas import rfc3339
from app.models.tables import Agency, ReferralGrant
from app.models.types import UTCDateTime, utcnow
from app.models.webhook_schemas import (
    DeliveryOut,
    EventType,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookSecret,
)
from app.models.webhook_tables import Webhook, WebhookDelivery
from app.services import audit, retention
from app.services.audit import Action
from app.services.leader import LeaderRunner
from app.services.server_keys import webhook_secret_key
from app.vocab import AgencyKind, AgencyStatus, DeliveryStatus

log = logging.getLogger("refgate.webhooks")
ADVISORY_LOCK_KEY = 0x7265_6667_7768_6B  # "refgwhk", distinct from the sequencer's
USER_AGENT = f"refgate-webhooks/{__version__}"
_rng = random.SystemRandom()


# ---------------------------------------------------------------- signing


SEALED_PREFIX = "v1."  # the form every stored secret has (sealed at rest)


def seal_secret(settings: Settings, webhook_id: str, secret: str) -> str:
    """The form a signing secret is stored in: XChaCha20-Poly1305 under the server's
    webhook key, bound to its webhook's id, so a database dump alone cannot sign
    deliveries and a sealed secret copied to another row does not open."""
    box = nacl.secret.Aead(webhook_secret_key(settings))
    return SEALED_PREFIX + b64url_encode(bytes(box.encrypt(secret.encode(), webhook_id.encode())))


def open_secret(settings: Settings, webhook_id: str, stored: str) -> str:
    """The signing secret of a stored (sealed) value."""
    if not stored.startswith(SEALED_PREFIX):
        raise nacl.exceptions.CryptoError("the stored webhook secret is not sealed")
    box = nacl.secret.Aead(webhook_secret_key(settings))
    sealed = b64url_decode(stored.removeprefix(SEALED_PREFIX))
    return box.decrypt(sealed, webhook_id.encode()).decode()


def signature_header(
    secret: str,
    previous: str | None,
    previous_expires_at: datetime | None,
    msg_id: str,
    timestamp: int,
    body: bytes,
    now: datetime,
) -> str:
    sigs = [sign(secret, msg_id, timestamp, body)]
    if previous and previous_expires_at is not None and previous_expires_at > now:
        sigs.append(sign(previous, msg_id, timestamp, body))
    return " ".join(sigs)


# ---------------------------------------------------------------- targets (SSRF)


class TargetRefused(Exception):
    """A webhook URL that may not be called (scheme, form or address)."""


@dataclass(frozen=True)
class Target:
    """Where one attempt connects: ``url`` names the checked address when pinned."""

    url: httpx.URL
    host_header: str | None
    sni_hostname: str | None


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _public(ip: _Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _parse_url(url: str, settings: WebhookSettings) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018 - decoding an invalid IDNA label (xn--…) raises here
    except (httpx.InvalidURL, TypeError, ValueError):
        raise TargetRefused("the URL is not valid") from None
    allowed = ("https", "http") if settings.allow_private_targets else ("https",)
    if parsed.scheme not in allowed:
        raise TargetRefused("the URL must use https")
    if not parsed.host:
        raise TargetRefused("the URL has no host")
    if parsed.userinfo:
        raise TargetRefused("the URL must not carry credentials")
    if parsed.fragment:
        raise TargetRefused("the URL must not have a fragment")
    return parsed


async def _resolve(host: str, port: int) -> list[_Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=5
        )
    except (OSError, TimeoutError, UnicodeError):  # UnicodeError: a label IDNA cannot encode
        raise TargetRefused(f"the host {host} does not resolve") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


async def check_target(url: str, settings: WebhookSettings) -> Target:
    """Refuse a URL that is not https or resolves to a non-public address.

    With ``allow_private_targets`` any http(s) URL passes and is called as is.
    Otherwise every address the host resolves to must be public, and the
    returned target connects to the first of them (TLS still verifies the
    certificate against the host name).
    """
    parsed = _parse_url(url, settings)
    if settings.allow_private_targets:
        return Target(url=parsed, host_header=None, sni_hostname=None)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await _resolve(parsed.host, port)
    if not addresses or not all(_public(a) for a in addresses):
        raise TargetRefused(
            "the URL resolves to a private, loopback, link-local or reserved address"
        )
    pinned = str(addresses[0])
    if pinned == parsed.host:
        return Target(url=parsed, host_header=None, sni_hostname=None)
    return Target(
        url=parsed.copy_with(host=pinned),
        host_header=parsed.netloc.decode("ascii"),
        sni_hostname=parsed.host,
    )


# ---------------------------------------------------------------- outbox


def _message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def _payload(event: EventType, ts: str, data: Mapping[str, Any]) -> str:
    return json.dumps(
        {"type": str(event), "timestamp": ts, "data": dict(data)},
        separators=(",", ":"),
        sort_keys=True,
    )


# The subscriptions an event goes to, built once with bind parameters (a
# statement built per call costs more CPU than running it).
_SUBSCRIBED = (
    select(col(Webhook.id), col(Webhook.agency_id), col(Webhook.event_types))
    .join(Agency, col(Agency.id) == col(Webhook.agency_id))
    .where(
        col(Webhook.agency_id).in_(bindparam("targets", expanding=True)),
        col(Agency.status) == AgencyStatus.ACTIVE,
    )
)
# ... of agencies that may see the referral: law enforcement only with an active grant
_SUBSCRIBED_VISIBLE = _SUBSCRIBED.where(
    or_(
        col(Agency.kind) != AgencyKind.LAW_ENFORCEMENT,
        exists().where(
            col(ReferralGrant.referral_id) == bindparam("referral_id"),
            active_grant(col(Webhook.agency_id), bindparam("now", type_=UTCDateTime())),
        ),
    )
)


async def enqueue(
    db: AsyncSession,
    event: EventType,
    referral_id: str,
    targets: Mapping[str, Mapping[str, Any]],
    *,
    visible_only: bool = True,
) -> int:
    """Queue ``event`` for every webhook of the ``targets`` agencies subscribed to it.

    ``targets`` maps an agency id to the event data for it (``referral_id`` is
    added). Runs in the caller's transaction: two statements at most.
    """
    if not targets:
        return 0
    now = utcnow()
    stmt = _SUBSCRIBED_VISIBLE if visible_only else _SUBSCRIBED
    params = {"targets": list(targets), "referral_id": referral_id, "now": now}
    hooks = [
        (hook_id, agency_id)
        for hook_id, agency_id, types in (await db.execute(stmt, params)).all()
        if str(event) in json.loads(types)
    ]
    if not hooks:
        return 0
    ts = rfc3339(now)
    await db.execute(
        insert(WebhookDelivery),
        [
            {
                "id": _message_id(),
                "webhook_id": hook_id,
                "event_type": str(event),
                "payload": _payload(event, ts, {**targets[agency_id], "referral_id": referral_id}),
                "status": DeliveryStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for hook_id, agency_id in hooks
        ],
    )
    return len(hooks)


# Every active agency's subscriptions (directory events go to the whole task force);
# the LIKE only narrows the rows, the JSON list decides.
_SUBSCRIBED_ANYWHERE = (
    select(col(Webhook.id), col(Webhook.agency_id), col(Webhook.event_types))
    .join(Agency, col(Agency.id) == col(Webhook.agency_id))
    .where(
        col(Agency.status) == AgencyStatus.ACTIVE,
        col(Webhook.event_types).like(bindparam("pattern")),
    )
)


async def broadcast(db: AsyncSession, event: EventType, data: Mapping[str, Any]) -> int:
    """Queue ``event`` with ``data`` for every active agency's webhook subscribed to it
    (the directory's events: every task-force member may see the directory). Runs in
    the caller's transaction: two statements at most."""
    rows = (await db.execute(_SUBSCRIBED_ANYWHERE, {"pattern": f'%"{event}"%'})).all()
    hooks = [hook_id for hook_id, _, types in rows if str(event) in json.loads(types)]
    if not hooks:
        return 0
    now = utcnow()
    payload = _payload(event, rfc3339(now), data)
    await db.execute(
        insert(WebhookDelivery),
        [
            {
                "id": _message_id(),
                "webhook_id": hook_id,
                "event_type": str(event),
                "payload": payload,
                "status": DeliveryStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for hook_id in hooks
        ],
    )
    return len(hooks)


# ---------------------------------------------------------------- subscriptions


def _webhook_out(w: Webhook) -> WebhookOut:
    return WebhookOut(
        id=w.id,
        url=w.url,
        event_types=json.loads(w.event_types),
        created_at=w.created_at,
        secret_rotated_at=w.secret_rotated_at,
    )


def _not_found(who: Principal, action: Action, webhook_id: str, what: str) -> errors.NotFound:
    return errors.NotFound(
        f"no such {what}",
        audit=audit.denied(who.actor, action, "webhook", webhook_id, {"reason": "not visible"}),
    )


async def _owned(
    db: AsyncSession, who: Principal, webhook_id: str, action: Action, *, lock: bool = False
) -> Webhook:
    """The caller's agency's webhook, or 404 (another agency's is as missing)."""
    hook = await db.get(Webhook, webhook_id, with_for_update=lock)
    if hook is None or hook.agency_id != who.agency_id:
        raise _not_found(who, action, webhook_id, "webhook")
    return hook


async def create(
    db: AsyncSession, who: Principal, body: WebhookCreate, *, settings: Settings
) -> WebhookCreated:
    try:
        await check_target(body.url, settings.webhooks)
    except TargetRefused as exc:
        raise errors.Unprocessable(str(exc), slug="webhook/target-refused") from None
    count = await db.scalar(
        select(func.count()).select_from(Webhook).where(col(Webhook.agency_id) == who.agency_id)
    )
    if (count or 0) >= settings.webhooks.max_per_agency:
        raise errors.Conflict(
            f"an agency may have at most {settings.webhooks.max_per_agency} webhooks",
            slug="webhook/limit",
        )
    now = utcnow()
    secret = new_secret()
    types = sorted(str(t) for t in body.event_types)
    hook_id = str(uuid.uuid4())
    hook = Webhook(
        id=hook_id,
        agency_id=who.agency_id,
        url=body.url,
        event_types=json.dumps(types),
        secret=seal_secret(settings, hook_id, secret),
        created_by=who.client_id,
        created_at=now,
    )
    db.add(hook)
    await db.flush()
    await audit.record(
        db,
        who.actor,
        Action.WEBHOOK_CREATE,
        "webhook",
        hook.id,
        subject_agency=who.agency_id,
        detail={"host": httpx.URL(body.url).host, "event_types": types},
    )
    return WebhookCreated(**_webhook_out(hook).model_dump(), secret=secret)


async def list_for(db: AsyncSession, who: Principal) -> list[WebhookOut]:
    hooks = await db.scalars(
        select(Webhook)
        .where(col(Webhook.agency_id) == who.agency_id)
        .order_by(col(Webhook.created_at), col(Webhook.id))
    )
    return [_webhook_out(h) for h in hooks]


async def remove(db: AsyncSession, who: Principal, webhook_id: str) -> None:
    hook = await _owned(db, who, webhook_id, Action.WEBHOOK_DELETE, lock=True)
    # a DELETE's result is a CursorResult (AsyncSession.execute is typed as Result)
    dropped = cast(
        CursorResult[Any],
        await db.execute(delete(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == hook.id)),
    ).rowcount
    await db.execute(delete(Webhook).where(col(Webhook.id) == hook.id))
    await audit.record(
        db,
        who.actor,
        Action.WEBHOOK_DELETE,
        "webhook",
        hook.id,
        subject_agency=who.agency_id,
        detail={"deliveries_dropped": dropped},
    )


async def rotate_secret(
    db: AsyncSession, who: Principal, webhook_id: str, *, settings: Settings
) -> WebhookSecret:
    hook = await _owned(db, who, webhook_id, Action.WEBHOOK_ROTATE, lock=True)
    now = utcnow()
    grace = settings.webhooks.secret_grace
    secret = new_secret()
    previous_expires = now + timedelta(seconds=grace) if grace else None
    hook.previous_secret = hook.secret if grace else None
    hook.previous_secret_expires_at = previous_expires
    hook.secret = seal_secret(settings, hook.id, secret)
    hook.secret_rotated_at = now
    await db.flush()
    await audit.record(
        db,
        who.actor,
        Action.WEBHOOK_ROTATE,
        "webhook",
        hook.id,
        subject_agency=who.agency_id,
        detail={"previous_valid_seconds": grace},
    )
    return WebhookSecret(id=hook.id, secret=secret, previous_secret_expires_at=previous_expires)


def _delivery_out(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        webhook_id=d.webhook_id,
        event_type=EventType(d.event_type),
        status=d.status,
        attempts=d.attempts,
        payload=json.loads(d.payload),
        created_at=d.created_at,
        next_attempt_at=d.next_attempt_at if d.status == DeliveryStatus.PENDING else None,
        last_attempt_at=d.last_attempt_at,
        delivered_at=d.delivered_at,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
    )


async def deliveries(
    db: AsyncSession,
    who: Principal,
    webhook_id: str,
    *,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[DeliveryOut], str | None]:
    """A webhook's deliveries, newest first."""
    hook = await _owned(db, who, webhook_id, Action.WEBHOOK_READ)
    stmt = select(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == hook.id)
    if status:
        stmt = stmt.where(col(WebhookDelivery.status) == status)
    if cursor:
        ts, last_id = decode_time_id(cursor)
        stmt = stmt.where(
            tuple_(col(WebhookDelivery.created_at), col(WebhookDelivery.id)) < tuple_(ts, last_id)
        )
    rows = list(
        (
            await db.scalars(
                stmt.order_by(
                    col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc()
                ).limit(limit + 1)
            )
        ).all()
    )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_time_id(rows[-1].created_at, rows[-1].id) if more else None
    return [_delivery_out(d) for d in rows], next_cursor


async def replay(
    db: AsyncSession, who: Principal, webhook_id: str, delivery_id: str
) -> DeliveryOut:
    """Put a dead-lettered delivery back in the queue, with its id and payload unchanged."""
    hook = await _owned(db, who, webhook_id, Action.WEBHOOK_REPLAY)
    row = await db.get(WebhookDelivery, delivery_id, with_for_update=True)
    if row is None or row.webhook_id != hook.id:
        raise _not_found(who, Action.WEBHOOK_REPLAY, webhook_id, "delivery")
    if row.status != DeliveryStatus.DEAD:
        raise errors.Conflict(
            f"only a dead-lettered delivery can be replayed; this one is {row.status}",
            slug="webhook/not-dead",
        )
    row.status = DeliveryStatus.PENDING
    row.attempts = 0
    row.next_attempt_at = utcnow()
    await db.flush()
    await audit.record(
        db,
        who.actor,
        Action.WEBHOOK_REPLAY,
        "webhook",
        hook.id,
        subject_agency=who.agency_id,
        detail={"delivery": row.id, "event_type": row.event_type},
    )
    return _delivery_out(row)


# ---------------------------------------------------------------- dispatcher


def backoff(attempt: int, settings: WebhookSettings) -> float:
    """Seconds before retry number ``attempt`` (1-based): exponential, capped, with
    "equal jitter" (a random point in the upper half) so that retries spread out."""
    delay = min(settings.backoff_cap, settings.backoff_base * 2.0 ** max(attempt - 1, 0))
    return delay / 2 + _rng.uniform(0, delay / 2)


def _lease(settings: WebhookSettings) -> timedelta:
    rounds = math.ceil(settings.batch_size / settings.concurrency)
    return timedelta(seconds=300 + rounds * (settings.timeout + 5))


@dataclass
class _Claimed:
    id: str
    attempts: int
    event_type: str
    payload: str
    url: str
    secret: str  # as stored (sealed) until dispatch_once opens it
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    webhook_id: str


@dataclass(frozen=True)
class _Result:
    claimed: _Claimed
    ok: bool
    status_code: int | None
    error: str | None


@dataclass
class DispatchReport:
    claimed: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0


async def _claim(
    maker: async_sessionmaker[AsyncSession], settings: WebhookSettings
) -> list[_Claimed]:
    now = utcnow()
    async with maker() as db, db.begin():
        due = (
            select(col(WebhookDelivery.id))
            .where(
                col(WebhookDelivery.status) == DeliveryStatus.PENDING,
                col(WebhookDelivery.next_attempt_at) <= now,
            )
            .order_by(col(WebhookDelivery.next_attempt_at))
            .limit(settings.batch_size)
        )
        if is_postgres(db, WebhookDelivery):
            due = due.with_for_update(skip_locked=True)
        ids = (
            (
                await db.execute(
                    update(WebhookDelivery)
                    .where(
                        col(WebhookDelivery.id).in_(due.scalar_subquery()),
                        col(WebhookDelivery.status) == DeliveryStatus.PENDING,
                        col(WebhookDelivery.next_attempt_at) <= now,
                    )
                    .values(
                        attempts=col(WebhookDelivery.attempts) + 1,
                        last_attempt_at=now,
                        next_attempt_at=now + _lease(settings),
                    )
                    .returning(col(WebhookDelivery.id))
                    .execution_options(synchronize_session=False)
                )
            )
            .scalars()
            .all()
        )
        if not ids:
            return []
        rows = await db.execute(
            select(
                col(WebhookDelivery.id),
                col(WebhookDelivery.attempts),
                col(WebhookDelivery.event_type),
                col(WebhookDelivery.payload),
                col(Webhook.url),
                col(Webhook.secret),
                col(Webhook.previous_secret),
                col(Webhook.previous_secret_expires_at),
                col(Webhook.id),
            )
            .join(Webhook, col(Webhook.id) == col(WebhookDelivery.webhook_id))
            .where(col(WebhookDelivery.id).in_(list(ids)))
            .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
        )
        return [_Claimed(*row) for row in rows]


async def _send(http: httpx.AsyncClient, settings: WebhookSettings, item: _Claimed) -> _Result:
    try:
        target = await check_target(item.url, settings)
    except TargetRefused as exc:
        return _Result(item, False, None, str(exc)[:200])
    body = item.payload.encode()
    now = utcnow()
    ts = int(now.timestamp())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": item.id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header(
            item.secret,
            item.previous_secret,
            item.previous_secret_expires_at,
            item.id,
            ts,
            body,
            now,
        ),
    }
    extensions: dict[str, Any] = {}
    if target.host_header is not None:
        headers["host"] = target.host_header
    if target.sni_hostname is not None and target.url.scheme == "https":
        extensions["sni_hostname"] = target.sni_hostname
    try:
        async with asyncio.timeout(settings.timeout):
            async with http.stream(
                "POST", target.url, content=body, headers=headers, extensions=extensions
            ) as response:
                code = response.status_code
    except TimeoutError:
        return _Result(item, False, None, "timed out")
    except httpx.HTTPError as exc:
        return _Result(item, False, None, f"{type(exc).__name__}: {exc}"[:200])
    if 200 <= code < 300:
        return _Result(item, True, code, None)
    return _Result(item, False, code, f"HTTP {code}")


async def _record(
    maker: async_sessionmaker[AsyncSession],
    settings: WebhookSettings,
    results: Sequence[_Result],
    report: DispatchReport,
) -> None:
    now = utcnow()
    async with maker() as db, db.begin():
        for r in results:
            values: dict[str, Any] = {
                "last_status_code": r.status_code,
                "last_error": r.error,
            }
            if r.ok:
                values.update(status=DeliveryStatus.DELIVERED, delivered_at=now)
                report.delivered += 1
            elif r.claimed.attempts >= settings.max_attempts:
                values.update(status=DeliveryStatus.DEAD)
                report.dead += 1
            else:
                values.update(
                    next_attempt_at=now + timedelta(seconds=backoff(r.claimed.attempts, settings))
                )
                report.retrying += 1
            # Only the attempt that was claimed may settle the row (a replay or a
            # delete in the meantime wins).
            await db.execute(
                update(WebhookDelivery)
                .where(
                    col(WebhookDelivery.id) == r.claimed.id,
                    col(WebhookDelivery.status) == DeliveryStatus.PENDING,
                    col(WebhookDelivery.attempts) == r.claimed.attempts,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )


async def dispatch_once(
    maker: async_sessionmaker[AsyncSession], settings: Settings, http: httpx.AsyncClient
) -> DispatchReport:
    """Claim the deliveries that are due, send them, record the outcomes."""
    cfg = settings.webhooks
    report = DispatchReport()
    claimed = await _claim(maker, cfg)
    report.claimed = len(claimed)
    if not claimed:
        return report
    sendable: list[_Claimed] = []
    unsendable: list[_Result] = []
    for item in claimed:
        try:
            item.secret = open_secret(settings, item.webhook_id, item.secret)
            if item.previous_secret is not None:
                item.previous_secret = open_secret(settings, item.webhook_id, item.previous_secret)
        except (nacl.exceptions.CryptoError, EncodingError, UnicodeDecodeError):
            # another server's key, or a sealed secret moved between rows: never send unsigned
            log.error("webhook signing secret does not open", extra={"webhook": item.webhook_id})
            unsendable.append(_Result(item, False, None, "the signing secret does not open"))
            continue
        sendable.append(item)
    gate = asyncio.Semaphore(cfg.concurrency)

    async def one(item: _Claimed) -> _Result:
        async with gate:
            return await _send(http, cfg, item)

    results = [*await asyncio.gather(*(one(c) for c in sendable)), *unsendable]
    await _record(maker, cfg, results, report)
    return report


def http_client(settings: WebhookSettings) -> httpx.AsyncClient:
    """The dispatcher's client: bounded timeouts, no redirects, no proxies from the env."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.timeout),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=settings.concurrency * 2),
    )


class WebhookRunner(LeaderRunner):
    """Delivers webhooks and runs the periodic retention purge, in the one leader worker."""

    name = "webhook-dispatcher"
    lock_key = ADVISORY_LOCK_KEY

    def __init__(
        self,
        engine: AsyncEngine,
        maker: async_sessionmaker[AsyncSession],
        settings: Settings,
    ) -> None:
        super().__init__(engine)
        self.maker = maker
        self.settings = settings
        self.http = http_client(settings.webhooks)
        # The first purge waits one interval: a restart loop must not purge in a loop.
        self.next_purge_at = time.monotonic() + settings.retention.interval

    async def stop(self) -> None:
        await super().stop()
        await self.http.aclose()

    def idle_seconds(self) -> float:
        return self.settings.webhooks.poll_interval

    async def step(self) -> bool:
        report = await dispatch_once(self.maker, self.settings, self.http)
        if time.monotonic() >= self.next_purge_at:
            self.next_purge_at = time.monotonic() + self.settings.retention.interval
            try:
                done = await retention.run(self.engine, self.settings)
                if done.referrals or done.expired_grant_keys:
                    log.info("retention purge", extra=done.as_dict())
            except Exception as exc:  # the purge retries at the next interval
                log.warning("retention purge failed", extra={"error": type(exc).__name__})
        return report.claimed == self.settings.webhooks.batch_size
