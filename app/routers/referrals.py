from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from app import errors
from app.auth import AnyPrincipal, Caseworker, CaseworkerDb, ReaderDb, StatusWriterDb
from app.crypto.wire import Amendment, EnvelopeIn, Revocations, StatusIn, TaskStatus
from app.deps import Db
from app.jsonbody import json_object
from app.models.schemas import (
    AmendmentDone,
    EnvelopeOut,
    Limits,
    ReferralList,
    ReferralSummary,
    RevocationsDone,
    StatusOut,
)
from app.models.types import QueryTime
from app.services import referrals
from app.vocab import Urgency

router = APIRouter(prefix="/v1/referrals", tags=["referrals"])
READ_ERRORS = (401, 403, 404, 422)


def _body_doc(model: type[EnvelopeIn] | type[Amendment] | type[StatusIn]) -> dict[str, object]:
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
    summary="Send a referral: an Envelope v2, checked and stored without being opened",
    response_model=ReferralSummary,
    responses=errors.responses(400, 401, 403, 409, 413, 415, 422),
    openapi_extra=_body_doc(EnvelopeIn),
)
async def create_referral(
    request: Request,
    a: CaseworkerDb,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")
    ] = None,
) -> JSONResponse:
    body = await json_object(request)
    status, response = await referrals.create(
        a.db, a.who, body, settings=request.app.state.settings, idempotency_key=idempotency_key
    )
    return JSONResponse(response, status_code=status)


@router.get(
    "",
    summary="List sent or received referrals, newest first (requests and statuses, no content)",
    response_model=ReferralList,
    responses=errors.responses(400, 401, 403, 422),
)
async def list_referrals(
    a: ReaderDb,
    box: Literal["sent", "received"] = "received",
    status: TaskStatus | None = None,
    urgency: Urgency | None = None,
    since: QueryTime | None = None,
    limit: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None, max_length=256),
) -> Response:
    items, next_cursor = await referrals.list_page(
        a.db,
        a.who,
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
async def get_referral(referral_id: str, a: ReaderDb) -> Response:
    body = await referrals.read(a.db, a.who, referral_id)
    return Response(body.encode("utf-8"), media_type="application/json")


@router.post(
    "/{referral_id}/status",
    summary="Post this recipient's signed status (closed loop)",
    response_model=StatusOut,
    responses=errors.responses(400, 401, 403, 404, 409, 415, 422),
    openapi_extra=_body_doc(StatusIn),
)
async def post_status(referral_id: str, request: Request, a: StatusWriterDb) -> Response:
    body = await json_object(request)
    out = await referrals.update_status(
        a.db, a.who, referral_id, body, settings=request.app.state.settings
    )
    # encoded by pydantic's serializer directly (response_model above documents it)
    return Response(out.model_dump_json().encode("utf-8"), media_type="application/json")


@router.post(
    "/{referral_id}/withdraw",
    summary="Withdraw a referral: recipients' keys are deleted and their statuses cancelled",
    response_model=list[StatusOut],
    responses=errors.responses(*READ_ERRORS),
)
async def withdraw(referral_id: str, who: Caseworker, db: Db) -> list[StatusOut]:
    return await referrals.withdraw(db, who, referral_id)


@router.post(
    "/{referral_id}/grants",
    summary="Amend consent: a new manifest version with new grants and requests (sender)",
    response_model=AmendmentDone,
    responses=errors.responses(400, 401, 403, 404, 409, 415, 422),
    openapi_extra=_body_doc(Amendment),
)
async def amend(referral_id: str, request: Request, who: Caseworker, db: Db) -> AmendmentDone:
    body = await json_object(request)
    done = await referrals.amend(db, who, referral_id, body, settings=request.app.state.settings)
    return AmendmentDone.model_validate(done)


@router.post(
    "/{referral_id}/revocations",
    summary="Revoke consent for (fid, recipient) pairs: their wrapped keys are deleted (sender)",
    response_model=RevocationsDone,
    responses=errors.responses(*READ_ERRORS),
)
async def revoke(referral_id: str, body: Revocations, who: Caseworker, db: Db) -> RevocationsDone:
    pairs = [(r.fid, r.recipient) for r in body.revocations]
    revoked_at = await referrals.revoke(db, who, referral_id, pairs)
    return RevocationsDone(referral_id=referral_id, revoked=body.revocations, revoked_at=revoked_at)


limits_router = APIRouter(tags=["referrals"])


@limits_router.get(
    "/v1/limits",
    summary="What the server refuses beyond (consent length, sizes) and the vocabularies",
    response_model=Limits,
    responses=errors.responses(401, 403),
)
async def get_limits(request: Request, who: AnyPrincipal) -> Limits:
    return referrals.limits(request.app.state.settings)
