from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BeforeValidator

from app import errors
from app.auth import DirectoryReader, DirectoryReaderDb, ServiceWriter
from app.deps import Db
from app.models.directory_schemas import (
    CapacityPatch,
    HsdsExport,
    ServiceIn,
    ServiceList,
    ServiceOut,
)
from app.services import directory
from app.vocab import Accepting, Population, Service

router = APIRouter(tags=["directory"])
WRITE_ERRORS = (401, 403, 404, 422)


def _empty_is_none(value: Any) -> Any:
    """An empty query parameter is the same as an absent one (DESIGN.md, Wire format);
    the text parameters' empty values are absent in ``directory.search``."""
    return None if value == "" else value


Absent = BeforeValidator(_empty_is_none)
OptionalService = Annotated[Service | None, Absent]
OptionalPopulation = Annotated[Population | None, Absent]
OptionalAccepting = Annotated[Accepting | None, Absent]


@router.get(
    "/v1/directory/services",
    summary="Find services: those accepting first, then the freshest capacity",
    response_model=ServiceList,
    responses=errors.responses(400, 401, 403, 422),
)
async def search_services(
    a: DirectoryReaderDb,
    category: Annotated[OptionalService, Query(description="a service of the vocabulary")] = None,
    language: Annotated[
        str | None,
        Query(max_length=63, description="BCP 47 tag; es also finds es-MX (RFC 4647)"),
    ] = None,
    population: OptionalPopulation = None,
    accepting: OptionalAccepting = None,
    q: Annotated[
        str | None,
        Query(max_length=directory.MAX_QUERY_LENGTH, description="text in name or description"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    body = await directory.search(
        a.db, a.who, category=category, language=language, population=population,
        accepting=accepting, q=q, limit=limit, cursor=cursor,
    )
    return Response(body.encode("utf-8"), media_type="application/json")


@router.get(
    "/v1/directory/hsds",
    summary="The directory as Open Referral HSDS 3 JSON (organizations and their services)",
    response_model=HsdsExport,
    responses=errors.responses(401, 403),
)
async def export_hsds(who: DirectoryReader, db: Db) -> HsdsExport:
    return HsdsExport.model_validate(await directory.export_hsds(db, who))


@router.post(
    "/v1/agencies/{agency_id}/services",
    status_code=201,
    summary="Publish a service of your agency (its caseworkers and admins)",
    response_model=ServiceOut,
    responses=errors.responses(*WRITE_ERRORS, 409),
)
async def create_service(
    agency_id: str, body: ServiceIn, who: ServiceWriter, db: Db
) -> ServiceOut:
    return await directory.create(db, who, agency_id, body)


@router.put(
    "/v1/agencies/{agency_id}/services/{service_id}",
    summary="Replace a service of your agency",
    response_model=ServiceOut,
    responses=errors.responses(*WRITE_ERRORS),
)
async def replace_service(
    agency_id: str, service_id: str, body: ServiceIn, who: ServiceWriter, db: Db
) -> ServiceOut:
    return await directory.replace(db, who, agency_id, service_id, body)


@router.delete(
    "/v1/agencies/{agency_id}/services/{service_id}",
    status_code=204,
    summary="Delete a service of your agency",
    response_class=Response,
    responses={204: {"description": "Deleted"}, **errors.responses(*WRITE_ERRORS)},
)
async def delete_service(
    agency_id: str, service_id: str, who: ServiceWriter, db: Db
) -> Response:
    await directory.remove(db, who, agency_id, service_id)
    return Response(status_code=204)


@router.patch(
    "/v1/agencies/{agency_id}/services/{service_id}/capacity",
    summary="Post capacity now (any of accepting, available, unit): audited, capacity.updated",
    response_model=ServiceOut,
    responses=errors.responses(*WRITE_ERRORS),
)
async def set_capacity(
    agency_id: str, service_id: str, body: CapacityPatch, who: ServiceWriter, db: Db
) -> ServiceOut:
    return await directory.set_capacity(db, who, agency_id, service_id, body)
