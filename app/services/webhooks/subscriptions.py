"""Subscriptions as their agency manages them: create, list, remove, rotate the secret,
list deliveries and replay a dead-lettered one. Another agency's webhook is as missing
(the rule lives in ``app.authz.webhooks``)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any, cast

import httpx
from sqlalchemy import CursorResult, delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import errors
from app.authz import webhooks as webhook_policy
from app.config import Settings
from app.crypto.webhook_signature import new_secret
from app.cursor import decode_time_id, encode_time_id
from app.identity import Principal
from app.models.types import utcnow
from app.models.webhook_schemas import (
    DeliveryOut,
    EventType,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookSecret,
)
from app.models.webhook_tables import Webhook, WebhookDelivery
from app.services import audit
from app.services.audit import Action
from app.services.webhooks.signing import seal_secret
from app.services.webhooks.targets import TargetRefused, check_target
from app.vocab import DeliveryStatus


def _webhook_out(w: Webhook) -> WebhookOut:
    return WebhookOut(
        id=w.id,
        url=w.url,
        event_types=json.loads(w.event_types),
        created_at=w.created_at,
        secret_rotated_at=w.secret_rotated_at,
    )


async def _owned(
    db: AsyncSession, who: Principal, webhook_id: str, action: Action, *, lock: bool = False
) -> Webhook:
    """The caller's agency's webhook, or 404 (``app.authz.webhooks.owned``)."""
    hook = await db.get(Webhook, webhook_id, with_for_update=lock)
    return webhook_policy.owned(who, hook, webhook_id, action)


async def create(
    db: AsyncSession, who: Principal, body: WebhookCreate, *, settings: Settings
) -> WebhookCreated:
    try:
        await check_target(body.url, settings.webhooks)
    except TargetRefused as exc:
        raise errors.Unprocessable(str(exc), slug="webhook/target-refused") from None
    count = await db.scalar(
        select(func.count()).select_from(Webhook).where(webhook_policy.of_own_agency(who))
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
        .where(webhook_policy.of_own_agency(who))
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
        raise webhook_policy.not_found(who, Action.WEBHOOK_REPLAY, webhook_id, "delivery")
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
