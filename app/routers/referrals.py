from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from app import errors
from app.auth import Caseworker, Reader, StatusWriter
from app.db import Db
from app.jsonbody import json_object
from app.models.schemas import (
    EnvelopeIn,
    EnvelopeOut,
    GrantsChanged,
    GrantUpdate,
    ReferralList,
    ReferralSummary,
    Revocations,
    RevocationsDone,
    StatusOut,
    StatusUpdate,
    TaskStatus,
    Urgency,
)
from app.services import referrals

router = APIRouter(prefix="/v1/referrals", tags=["referrals"])
READ_ERRORS = (401, 403, 404, 422)


def _body_doc(model: type[EnvelopeIn] | type[GrantUpdate]) -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


@router.post(
    "",
    status_code=201,
    summary="Send a referral: an Envelope v1, checked and stored without being opened",
    response_model=ReferralSummary,
    responses=errors.responses(400, 401, 403, 409, 413, 415, 422),
    openapi_extra=_body_doc(EnvelopeIn),
)
async def create_referral(
    request: Request,
    who: Caseworker,
    db: Db,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")
    ] = None,
) -> JSONResponse:
    body = await json_object(request)
    status, response = await referrals.create(
        db, who, body, settings=request.app.state.settings, idempotency_key=idempotency_key
    )
    return JSONResponse(response, status_code=status)


@router.get(
    "",
    summary="List sent or received referrals, newest first (metadata and statuses only)",
    response_model=ReferralList,
    responses=errors.responses(400, 401, 403, 422),
)
async def list_referrals(
    who: Reader,
    db: Db,
    box: Literal["sent", "received"] = "received",
    status: TaskStatus | None = None,
    urgency: Urgency | None = None,
    since: datetime | None = None,
    limit: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None, max_length=256),
) -> Response:
    items, next_cursor = await referrals.list_page(
        db,
        who,
        box=box,
        status=status,
        urgency=urgency,
        since=since,
        limit=limit,
        cursor=cursor,
    )
    # items are ReferralSummary objects as JSON text already (response_model documents them)
    body = '{"items":[' + ",".join(items) + '],"next_cursor":' + json.dumps(next_cursor) + "}"
    return Response(body.encode("utf-8"), media_type="application/json")


@router.get(
    "/{referral_id}",
    summary="Read a referral as the caller may see it",
    response_model=EnvelopeOut,
    responses=errors.responses(*READ_ERRORS),
)
async def get_referral(referral_id: str, who: Reader, db: Db) -> Response:
    body = await referrals.read(db, who, referral_id)
    return Response(body.encode("utf-8"), media_type="application/json")


@router.post(
    "/{referral_id}/status",
    summary="Post this recipient's status (closed loop)",
    response_model=StatusOut,
    responses=errors.responses(*READ_ERRORS, 409),
)
async def post_status(referral_id: str, body: StatusUpdate, who: StatusWriter, db: Db) -> StatusOut:
    return await referrals.update_status(
        db, who, referral_id, status=body.status, reason=body.reason, note=body.note
    )


@router.post(
    "/{referral_id}/withdraw",
    summary="Withdraw a referral: every recipient's status becomes cancelled (sender)",
    response_model=list[StatusOut],
    responses=errors.responses(*READ_ERRORS),
)
async def withdraw(referral_id: str, who: Caseworker, db: Db) -> list[StatusOut]:
    return await referrals.withdraw(db, who, referral_id)


@router.post(
    "/{referral_id}/grants",
    summary="Add newly consented grants with a re-signed manifest (sender)",
    response_model=GrantsChanged,
    responses=errors.responses(400, 401, 403, 404, 409, 415, 422),
    openapi_extra=_body_doc(GrantUpdate),
)
async def add_grants(referral_id: str, request: Request, who: Caseworker, db: Db) -> GrantsChanged:
    body = await json_object(request)
    changed = await referrals.add_grants(
        db, who, referral_id, body, settings=request.app.state.settings
    )
    return GrantsChanged.model_validate({"referral_id": referral_id, "grants": changed})


@router.post(
    "/{referral_id}/revocations",
    summary="Revoke consent for (field, recipient) pairs: their wrapped keys are deleted (sender)",
    response_model=RevocationsDone,
    responses=errors.responses(*READ_ERRORS),
)
async def revoke(referral_id: str, body: Revocations, who: Caseworker, db: Db) -> RevocationsDone:
    pairs = [(r.field, r.recipient) for r in body.revocations]
    revoked_at = await referrals.revoke(db, who, referral_id, pairs)
    return RevocationsDone(referral_id=referral_id, revoked=body.revocations, revoked_at=revoked_at)
