"""The transactional outbox: delivery rows inserted in the caller's transaction, for the
subscribed webhooks of agencies that may see the referral (``enqueue``; who may see it is
``app.authz.webhooks``'s rule) or of the whole task force (``broadcast``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Text, any_, bindparam, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.authz import webhooks as webhook_policy
from app.db import prepared
from app.dialect import is_postgres
from app.models.schemas import rfc3339
from app.models.tables import Agency
from app.models.types import UTCDateTime, utcnow
from app.models.webhook_schemas import EventType
from app.models.webhook_tables import Webhook, WebhookDelivery
from app.vocab import AgencyStatus, DeliveryStatus


def _message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def _payload(event: EventType, ts: str, data: Mapping[str, Any]) -> str:
    return json.dumps(
        {"type": str(event), "timestamp": ts, "data": dict(data)},
        separators=(",", ":"),
        sort_keys=True,
    )


# The subscriptions of the active ``targets`` agencies (``_SUBSCRIBED``), of those that
# may see the referral (``_SUBSCRIBED_VISIBLE``, by ``app.authz.webhooks``), each
# built once with bind parameters (a statement built per call costs more CPU than
# running it). On PostgreSQL the agencies are one array parameter (``= ANY``): one
# SQL text, and one prepared statement, whatever their number, where an expanding
# IN is rendered anew for each length. SQLite keeps the expanding IN.
_TARGETS = {
    True: col(Webhook.agency_id) == any_(bindparam("targets", type_=postgresql.ARRAY(Text))),
    False: col(Webhook.agency_id).in_(bindparam("targets", expanding=True)),
}
_SUBSCRIBED = {
    pg: select(col(Webhook.id), col(Webhook.agency_id), col(Webhook.event_types))
    .join(Agency, col(Agency.id) == col(Webhook.agency_id))
    .where(targets, col(Agency.status) == AgencyStatus.ACTIVE)
    for pg, targets in _TARGETS.items()
}
_SUBSCRIBED_VISIBLE = {
    pg: stmt.where(
        webhook_policy.sees_the_referral(
            bindparam("referral_id"), bindparam("now", type_=UTCDateTime())
        )
    )
    for pg, stmt in _SUBSCRIBED.items()
}


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
    stmt = (_SUBSCRIBED_VISIBLE if visible_only else _SUBSCRIBED)[is_postgres(db, Webhook)]
    params = {"targets": list(targets), "referral_id": referral_id, "now": now}
    hooks = [
        (hook_id, agency_id)
        for hook_id, agency_id, types in await prepared(stmt, Webhook).all(db, params)
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
