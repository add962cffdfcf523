from __future__ import annotations

from fastapi import APIRouter, Query

from app import errors
from app.auth import Admin, DirectoryReader
from app.deps import Db
from app.models.schemas import (
    AgencyCreate,
    AgencyList,
    AgencyOut,
    ClientCreate,
    ClientOut,
    KeyProof,
    KeyRotation,
)
from app.services import agencies, key_directory
from app.vocab import AgencyStatus

router = APIRouter(prefix="/v1/agencies", tags=["agencies"])
AUTH_ERRORS = (401, 403, 404, 422)
MAX_INT64 = 2**63 - 1  # tree sizes are BIGINT


@router.get(
    "",
    summary="The task-force directory: agencies and their public keys",
    response_model=AgencyList,
    responses=errors.responses(401, 403, 422),
)
async def list_agencies(
    who: DirectoryReader,
    db: Db,
    limit: int = Query(100, ge=1, le=500),
    cursor: str | None = Query(None, max_length=64),
) -> AgencyList:
    return await agencies.list_page(db, who.actor, limit=limit, cursor=cursor)


@router.get(
    "/{agency_id}",
    summary="One directory entry",
    response_model=AgencyOut,
    responses=errors.responses(*AUTH_ERRORS),
)
async def get_agency(agency_id: str, who: DirectoryReader, db: Db) -> AgencyOut:
    return await agencies.read(db, who.actor, agency_id)


@router.post(
    "",
    status_code=201,
    summary="Onboard an agency with its encryption and signing keys (admin)",
    response_model=AgencyOut,
    responses=errors.responses(401, 403, 409, 422),
)
async def create_agency(body: AgencyCreate, who: Admin, db: Db) -> AgencyOut:
    return await agencies.create(
        db,
        who.actor,
        name=body.name,
        kind=body.kind,
        enc_key=body.enc_key,
        sign_key=body.sign_key,
    )


@router.post(
    "/{agency_id}/clients",
    status_code=201,
    summary="Register an API client of an agency (admin)",
    response_model=ClientOut,
    responses=errors.responses(*AUTH_ERRORS),
)
async def create_client(agency_id: str, body: ClientCreate, who: Admin, db: Db) -> ClientOut:
    return await agencies.create_client(
        db, who.actor, agency_id, role=body.role, auth_key=body.auth_key
    )


@router.post(
    "/{agency_id}/clients/{client_id}/revoke",
    summary="Revoke one API client: no new tokens, its current token refused (admin)",
    response_model=ClientOut,
    responses=errors.responses(*AUTH_ERRORS),
)
async def revoke_client(agency_id: str, client_id: str, who: Admin, db: Db) -> ClientOut:
    return await agencies.revoke_client(db, who.actor, agency_id, client_id)


@router.post(
    "/{agency_id}/keys",
    status_code=201,
    summary="Rotate an agency's keys; the old ones stay listed as retired (admin)",
    response_model=AgencyOut,
    responses=errors.responses(*AUTH_ERRORS, 409),
)
async def rotate_keys(agency_id: str, body: KeyRotation, who: Admin, db: Db) -> AgencyOut:
    return await agencies.rotate_keys(
        db, who.actor, agency_id, enc_key=body.enc_key, sign_key=body.sign_key
    )


@router.post(
    "/{agency_id}/suspend",
    summary="Suspend an agency: its clients get no tokens and nothing is sent to it (admin)",
    response_model=AgencyOut,
    responses=errors.responses(*AUTH_ERRORS),
)
async def suspend(agency_id: str, who: Admin, db: Db) -> AgencyOut:
    return await agencies.set_status(db, who.actor, agency_id, AgencyStatus.SUSPENDED)


@router.post(
    "/{agency_id}/reactivate",
    summary="Lift a suspension (admin)",
    response_model=AgencyOut,
    responses=errors.responses(*AUTH_ERRORS),
)
async def reactivate(agency_id: str, who: Admin, db: Db) -> AgencyOut:
    return await agencies.set_status(db, who.actor, agency_id, AgencyStatus.ACTIVE)


@router.get(
    "/{agency_id}/keys/proof",
    summary="Key transparency: the agency's leaf in the directory a checkpoint commits to",
    response_model=KeyProof,
    responses=errors.responses(*AUTH_ERRORS, 409, 503),
)
async def key_proof(
    agency_id: str,
    who: DirectoryReader,
    db: Db,
    tree_size: int | None = Query(None, ge=0, le=MAX_INT64),
) -> KeyProof:
    return KeyProof.model_validate(await key_directory.key_proof(db, who, agency_id, tree_size))
