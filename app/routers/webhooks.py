from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response

from app import errors
from app.auth import WebhookManager
from app.deps import Db
from app.models.webhook_schemas import (
    DeliveryList,
    DeliveryOut,
    DeliveryStatus,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookSecret,
)
from app.services import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
ERRORS = (401, 403, 404, 422)


@router.post(
    "",
    status_code=201,
    summary="Subscribe an HTTPS endpoint to events; the signing secret is shown only here",
    response_model=WebhookCreated,
    responses=errors.responses(401, 403, 409, 422),
)
async def create_webhook(
    body: WebhookCreate, request: Request, who: WebhookManager, db: Db
) -> WebhookCreated:
    return await webhooks.create(db, who, body, settings=request.app.state.settings)


@router.get(
    "",
    summary="List this agency's webhooks",
    response_model=WebhookList,
    responses=errors.responses(401, 403),
)
async def list_webhooks(who: WebhookManager, db: Db) -> WebhookList:
    return WebhookList(items=await webhooks.list_for(db, who))


@router.delete(
    "/{webhook_id}",
    status_code=204,
    summary="Delete a webhook and its pending deliveries",
    response_class=Response,
    responses={204: {"description": "Deleted"}, **errors.responses(*ERRORS)},
)
async def delete_webhook(webhook_id: str, who: WebhookManager, db: Db) -> Response:
    await webhooks.remove(db, who, webhook_id)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    summary="A webhook's deliveries, newest first",
    response_model=DeliveryList,
    responses=errors.responses(400, *ERRORS),
)
async def list_deliveries(
    webhook_id: str,
    who: WebhookManager,
    db: Db,
    status: DeliveryStatus | None = None,
    limit: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None, max_length=256),
) -> DeliveryList:
    items, next_cursor = await webhooks.deliveries(
        db, who, webhook_id, status=status, limit=limit, cursor=cursor
    )
    return DeliveryList(items=items, next_cursor=next_cursor)


@router.post(
    "/{webhook_id}/rotate-secret",
    summary="Issue a new signing secret; the previous one keeps signing for a grace period",
    response_model=WebhookSecret,
    responses=errors.responses(*ERRORS),
)
async def rotate_secret(
    webhook_id: str, request: Request, who: WebhookManager, db: Db
) -> WebhookSecret:
    return await webhooks.rotate_secret(
        db, who, webhook_id, settings=request.app.state.settings
    )


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/replay",
    status_code=202,
    summary="Queue a dead-lettered delivery again (same webhook-id and payload)",
    response_model=DeliveryOut,
    responses=errors.responses(*ERRORS, 409),
)
async def replay_delivery(
    webhook_id: str, delivery_id: str, who: WebhookManager, db: Db
) -> DeliveryOut:
    return await webhooks.replay(db, who, webhook_id, delivery_id)
