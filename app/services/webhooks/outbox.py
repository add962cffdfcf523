"""The transactional outbox: delivery rows inserted in the caller's transaction, for the
subscribed webhooks of agencies that may see the referral (``enqueue``) or of the whole
task force (``broadcast``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, exists, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.authz import active_grant
from app.models.schemas import rfc3339
from app.models.tables import Agency, ReferralGrant
from app.models.types import UTCDateTime, utcnow
from app.models.webhook_schemas import EventType
from app.models.webhook_tables import Webhook, WebhookDelivery
from app.vocab import AgencyKind, AgencyStatus, DeliveryStatus


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
