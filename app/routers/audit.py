from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from app import errors
from app.auth import AnyPrincipal, Authed, Principal, hot
from app.authz import audit as audit_policy
from app.crypto.checkpoint import verifier_key
from app.deps import Db
from app.models.schemas import AuditItem, AuditList, ConsistencyProof, InclusionProof
from app.models.types import QueryTime
from app.services import audit_log
from app.services.audit_log import EventFilter
from app.vocab import AuditAction as Action
from app.vocab import AuditOutcome

_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
MAX_INT64 = 2**63 - 1  # log positions and sizes are BIGINT
router = APIRouter(prefix="/v1/audit", tags=["audit"])


async def audit_reader(who: AnyPrincipal) -> Principal:
    """Who may read the audit log, and which events: ``app.authz.audit``."""
    return audit_policy.require_reader(who)


AuditReader = Annotated[Principal, Depends(audit_reader)]
# the hot routes (query, inclusion proof): caller and transaction in one dependency
AuditDb = Annotated[Authed, hot(check=audit_policy.require_reader)]
ERRORS = errors.responses(400, 401, 403, 422)


async def event_filter(  # async: a plain def would run in the threadpool
    actor: str | None = Query(None, max_length=64),
    agency: str | None = Query(None, max_length=36),
    resource_id: str | None = Query(None, max_length=128),
    action: Action | None = None,
    outcome: AuditOutcome | None = None,
    since: QueryTime | None = None,
    until: QueryTime | None = None,
) -> EventFilter:
    return EventFilter(
        actor=actor,
        agency=agency,
        resource_id=resource_id,
        action=str(action) if action else None,
        outcome=str(outcome) if outcome else None,
        since=since,
        until=until,
    )


Filter = Annotated[EventFilter, Depends(event_filter)]


@router.get(
    "/events",
    summary="Query audit events, newest first",
    response_model=AuditList,
    responses=ERRORS,
)
async def events(
    a: AuditDb,
    f: Filter,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=64),
) -> Response:
    # The body is assembled from the stored canonical events (an AuditList, see
    # audit_log.query_json); response_model above documents it.
    body = await audit_log.query_json(a.db, a.who, f, limit=limit, cursor=cursor)
    return Response(body, media_type="application/json")


@router.get(
    "/export",
    summary="Stream matching events in log order as NDJSON or CSV",
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}, **ERRORS},
)
async def export(
    request: Request,
    who: AuditReader,
    db: Db,
    f: Filter,
    format: Literal["ndjson", "csv"] = "ndjson",
) -> StreamingResponse:
    stream = await audit_log.start_export(db, request.app.state.sessionmaker, who, f, format)
    media = "application/x-ndjson" if format == "ndjson" else "text/csv"
    return StreamingResponse(stream, media_type=media)


@router.get(
    "/events/{seq}",
    summary="One sequenced event and its leaf hash",
    response_model=AuditItem,
    responses=errors.responses(401, 403, 404, 422),
)
async def event(who: AuditReader, db: Db, seq: int = Path(ge=0, le=MAX_INT64)) -> AuditItem:
    return AuditItem.model_validate(await audit_log.event_at(db, who, seq))


@router.get(
    "/checkpoint",
    summary="The latest signed checkpoint (C2SP signed note) with its witness cosignatures",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}, **errors.responses(401, 403, 404, 503)},
)
async def checkpoint(
    request: Request,
    who: AnyPrincipal,
    db: Db,
    cosigned: int | None = Query(
        None, ge=0, le=32, description="the newest checkpoint with at least this many "
        "cosignatures by configured witnesses (404 when there is none)"
    ),
) -> PlainTextResponse:
    # every client verifies checkpoints before it trusts a key, admins too
    # (DESIGN.md "Key transparency"), so any authenticated caller may read them
    settings = request.app.state.settings
    return PlainTextResponse(await audit_log.read_checkpoint(db, who, settings, cosigned))


@router.get(
    "/proof/inclusion",
    summary="RFC 9162 inclusion proof of one event",
    response_model=InclusionProof,
    responses=errors.responses(401, 403, 422, 503),
)
async def inclusion(
    a: AuditDb,
    seq: int = Query(ge=0, le=MAX_INT64),
    tree_size: int | None = Query(None, ge=1, le=MAX_INT64),
) -> Response:
    proof = await audit_log.inclusion(a.db, a.who, seq, tree_size)
    # ints and base64 strings: the C encoder's bytes (response_model above documents them)
    return Response(_ENCODE(proof).encode("utf-8"), media_type="application/json")


@router.get(
    "/proof/consistency",
    summary="RFC 9162 consistency proof between two tree sizes",
    response_model=ConsistencyProof,
    responses=errors.responses(401, 403, 422, 503),
)
async def consistency(
    who: AnyPrincipal,  # needed to advance any client's pin
    db: Db,
    first: int = Query(ge=0, le=MAX_INT64),
    second: int | None = Query(None, ge=0, le=MAX_INT64),
) -> ConsistencyProof:
    return ConsistencyProof.model_validate(await audit_log.consistency(db, who, first, second))


@router.get(
    "/log-key",
    summary="The checkpoint verifier key (<name>+<key hash>+<base64 key>)",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}, **errors.responses(401, 403)},
)
async def log_key(request: Request, who: AnyPrincipal) -> PlainTextResponse:
    settings = request.app.state.settings
    return PlainTextResponse(
        verifier_key(settings.audit.log_origin, request.app.state.server_keys.log_public) + "\n"
    )
