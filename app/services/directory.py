"""The service directory: agencies' services and live capacity, search, HSDS export.

Rules (DESIGN.md, "Service directory and capacity"):
- every task-force member reads the directory (any role: ``agencies:read``);
- an agency's services and capacity are written by its own caseworkers and
  admins only (``authz.manages_services_of``). Another agency's caller gets
  403 (agencies are public, so that one exists is no secret), a missing agency
  or a service that is not that agency's 404; every refusal is an audit event;
- capacity carries when it was set and by which API client; a capacity
  change is audited and queued as ``capacity.updated`` for every subscribed
  agency, in the action's transaction;
- no street address ever enters: the request schemas refuse one, and no
  column could hold it.

A search lists services of active agencies only, those accepting first, then
the freshest capacity, then by id (a total order, so that the cursor, which
names the last row's place in it, pages without duplicates or gaps). It is one
statement whatever the number of services, built once per filter shape with
bind parameters: the category, language and population filters are terms held
in the service row (a language filter matches by RFC 4647 basic filtering:
``es`` finds ``es-MX``), one GIN-indexed containment test on PostgreSQL
whatever their number; ``accepting`` is the leading column of the ordering
index; and the text filter ``q`` looks in the lowercased name and description
of the rows the other filters leave. The page's JSON is assembled from the
stored JSON lists as they are, not parsed and re-encoded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Integer, Text, bindparam, delete, func, insert, select, tuple_
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select
from sqlmodel import col

from app import authz, errors, langtags
from app.cursor import decode_rank_time_id, invalid_cursor
from app.cursor import encode as encode_cursor
from app.dialect import is_postgres
from app.identity import Principal
from app.models.directory_schemas import CapacityPatch, ServiceIn, ServiceOut
from app.models.directory_tables import DirectoryService
from app.models.schemas import rfc3339
from app.models.tables import Agency, table_of
from app.models.types import UTCDateTime, utcnow
from app.models.webhook_schemas import EventType
from app.services import audit, hsds, webhooks
from app.services.agencies import no_such_agency
from app.services.audit import Action, Actor
from app.vocab import Accepting, AgencyStatus

ACCEPTING_RANK = {Accepting.YES: 2, Accepting.WAITLIST: 1, Accepting.NO: 0}
MAX_SERVICES_PER_AGENCY = 500
MAX_QUERY_LENGTH = 100
CATEGORY, POPULATION, LANGUAGE = "category", "population", "language"


# ---------------------------------------------------------------- rows


def _search_text(name: str, description: str) -> str:
    return f"{name}\n{description}".lower()


def _row_values(body: ServiceIn) -> dict[str, Any]:
    return {
        "name": body.name,
        "description": body.description,
        "categories": json.dumps([str(c) for c in body.categories]),
        "languages": json.dumps(body.languages, ensure_ascii=False),
        "populations": json.dumps([str(p) for p in body.populations]),
        "eligibility": body.eligibility,
        "service_area": body.service_area,
        "hours": body.hours,
        "intake": body.intake,
        "accepting": str(body.accepting),
        "accepting_rank": ACCEPTING_RANK[body.accepting],
        "available": body.capacity.available,
        "unit": str(body.capacity.unit),
        "search_text": _search_text(body.name, body.description),
        "terms": _terms(body),
    }


def _term(kind: str, value: str) -> str:
    return f"{kind}:{value}"


def _terms(body: ServiceIn) -> list[str]:
    """The filterable values: categories, populations, and every language range that
    matches one of the service's tags."""
    ranges = sorted({r for tag in body.languages for r in langtags.prefixes(tag)})
    return [
        *(_term(CATEGORY, str(c)) for c in body.categories),
        *(_term(POPULATION, str(p)) for p in body.populations),
        *(_term(LANGUAGE, r) for r in ranges),
    ]


def _item(row: Any, agency_name: str) -> dict[str, Any]:
    """A ``ServiceOut`` as JSON-ready values, from a service row (ORM or Core)."""
    return {
        "id": row.id,
        "agency": row.agency_id,
        "agency_name": agency_name,
        "name": row.name,
        "description": row.description,
        "categories": json.loads(row.categories),
        "languages": json.loads(row.languages),
        "populations": json.loads(row.populations),
        "eligibility": row.eligibility,
        "service_area": row.service_area,
        "hours": row.hours,
        "intake": row.intake,
        "accepting": row.accepting,
        "capacity": {
            "available": row.available,
            "unit": row.unit,
            "updated_at": rfc3339(row.capacity_updated_at),
            "updated_by": row.capacity_updated_by,
        },
    }


def _capacity(row: DirectoryService) -> dict[str, Any]:
    return {"accepting": row.accepting, "available": row.available, "unit": row.unit}


# ---------------------------------------------------------------- writes


async def publish(
    db: AsyncSession,
    actor: Actor,
    agency_id: str,
    bodies: Sequence[ServiceIn],
    *,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Insert services of ``agency_id`` set-based (two statements, three on SQLite,
    whatever their number), each with its ``service:create`` event; the rows written.
    No authorization check: ``create`` makes it; the demo and the benchmark seed with
    it directly."""
    now = now or utcnow()
    ids = [str(uuid.uuid4()) for _ in bodies]
    rows = [
        {
            "id": service_id,
            "agency_id": agency_id,
            **_row_values(body),
            "capacity_updated_at": now,
            "capacity_updated_by": actor.client_id,
            "created_at": now,
            "updated_at": now,
        }
        for service_id, body in zip(ids, bodies, strict=True)
    ]
    if not rows:
        return rows
    await db.execute(insert(DirectoryService), rows)
    await audit.record_pending(
        db,
        *(
            audit.PendingEvent(
                actor=actor,
                action=Action.SERVICE_CREATE,
                resource_type="service",
                resource_id=service_id,
                subject_agency=agency_id,
                detail={
                    "categories": [str(c) for c in body.categories],
                    "accepting": str(body.accepting),
                    "available": body.capacity.available,
                    "unit": str(body.capacity.unit),
                },
            )
            for service_id, body in zip(ids, bodies, strict=True)
        ),
    )
    return rows


async def has_services(db: AsyncSession) -> bool:
    """Whether any agency publishes a service yet."""
    return await db.scalar(select(col(DirectoryService.id)).limit(1)) is not None


async def _require_own(
    db: AsyncSession, who: Principal, agency_id: str, action: Action, service_id: str | None
) -> None:
    """Refuse (403, or 404 for a missing agency) a caller that may not write these services."""
    if authz.manages_services_of(who, agency_id):
        return
    found = await db.scalar(select(col(Agency.id)).where(col(Agency.id) == agency_id))
    event = audit.denied(
        who.actor,
        action,
        "service" if service_id is not None else "agency",
        service_id if service_id is not None else agency_id,
        {"reason": "another agency" if found else "no such agency"},
        subject_agency=found,
    )
    if found is None:
        raise errors.NotFound(no_such_agency(agency_id), audit=event)
    raise errors.Forbidden(
        "only an agency's own caseworkers and admins may change its services and capacity; "
        f"yours are under /v1/agencies/{who.agency_id}/services",
        slug="directory/not-your-agency",
        audit=event,
    )


async def _own_service(
    db: AsyncSession, who: Principal, agency_id: str, service_id: str, action: Action
) -> DirectoryService:
    await _require_own(db, who, agency_id, action, service_id)
    row = await db.get(DirectoryService, service_id, with_for_update=True)
    if row is None or row.agency_id != agency_id:
        raise errors.NotFound(
            "no such service of this agency (list yours with GET /v1/directory/services)",
            audit=audit.denied(
                who.actor, action, "service", service_id, {"reason": "no such service"},
                subject_agency=agency_id,
            ),
        )
    return row


async def _agency_name(db: AsyncSession, agency_id: str) -> str:
    return str(await db.scalar(select(col(Agency.name)).where(col(Agency.id) == agency_id)))


async def create(db: AsyncSession, who: Principal, agency_id: str, body: ServiceIn) -> ServiceOut:
    await _require_own(db, who, agency_id, Action.SERVICE_CREATE, None)
    count = await db.scalar(
        select(func.count()).select_from(DirectoryService)
        .where(col(DirectoryService.agency_id) == agency_id)
    )
    if (count or 0) >= MAX_SERVICES_PER_AGENCY:
        raise errors.Conflict(
            f"an agency may publish at most {MAX_SERVICES_PER_AGENCY} services; "
            "replace or delete one first",
            slug="directory/limit",
        )
    [row] = await publish(db, who.actor, agency_id, [body])
    return ServiceOut.model_validate(
        _item(DirectoryService(**row), await _agency_name(db, agency_id))
    )


async def replace(
    db: AsyncSession, who: Principal, agency_id: str, service_id: str, body: ServiceIn
) -> ServiceOut:
    """Replace every member; the capacity given is set now, by the caller."""
    row = await _own_service(db, who, agency_id, service_id, Action.SERVICE_REPLACE)
    before = _capacity(row)
    now = utcnow()
    for name, value in _row_values(body).items():
        setattr(row, name, value)
    row.capacity_updated_at = now
    row.capacity_updated_by = who.client_id
    row.updated_at = now
    await db.flush()
    after = _capacity(row)
    await audit.record(
        db, who.actor, Action.SERVICE_REPLACE, "service", service_id, subject_agency=agency_id,
        detail={"categories": [str(c) for c in body.categories], "from": before, "to": after},
    )
    out = _item(row, await _agency_name(db, agency_id))
    if after != before:
        await _announce(db, out)
    return ServiceOut.model_validate(out)


async def remove(db: AsyncSession, who: Principal, agency_id: str, service_id: str) -> None:
    row = await _own_service(db, who, agency_id, service_id, Action.SERVICE_DELETE)
    await db.execute(delete(DirectoryService).where(col(DirectoryService.id) == row.id))
    await audit.record(
        db, who.actor, Action.SERVICE_DELETE, "service", service_id, subject_agency=agency_id,
        detail={"categories": json.loads(row.categories)},
    )


async def set_capacity(
    db: AsyncSession, who: Principal, agency_id: str, service_id: str, body: CapacityPatch
) -> ServiceOut:
    """Post capacity (any of accepting, available, unit): stamped now with the caller,
    audited, and pushed as ``capacity.updated`` (even unchanged: a fresh "still 2 beds"
    is news to whoever decides where to send her tonight)."""
    row = await _own_service(db, who, agency_id, service_id, Action.CAPACITY_UPDATE)
    before = _capacity(row)
    given = body.model_fields_set
    if "accepting" in given and body.accepting is not None:
        row.accepting = str(body.accepting)
        row.accepting_rank = ACCEPTING_RANK[body.accepting]
    if "available" in given:
        row.available = body.available
    if "unit" in given and body.unit is not None:
        row.unit = str(body.unit)
    row.capacity_updated_at = utcnow()
    row.capacity_updated_by = who.client_id
    await db.flush()
    await audit.record(
        db, who.actor, Action.CAPACITY_UPDATE, "service", service_id, subject_agency=agency_id,
        detail={"from": before, "to": _capacity(row)},
    )
    out = _item(row, await _agency_name(db, agency_id))
    await _announce(db, out)
    return ServiceOut.model_validate(out)


async def _announce(db: AsyncSession, item: dict[str, Any]) -> None:
    capacity = item["capacity"]
    await webhooks.broadcast(
        db,
        EventType.CAPACITY_UPDATED,
        {
            "service_id": item["id"],
            "agency": item["agency"],
            "accepting": item["accepting"],
            "available": capacity["available"],
            "unit": capacity["unit"],
            "updated_at": capacity["updated_at"],
        },
    )


# ---------------------------------------------------------------- search


def _decode_cursor(value: str) -> tuple[int, datetime, str]:
    rank, ts, service_id = decode_rank_time_id(value)
    if rank not in (0, 1, 2):  # the accepting ranks
        raise invalid_cursor()
    return rank, ts, service_id


_LISTED = (  # what a list item shows, and the row's place in the order (not the search columns)
    "id", "agency_id", "name", "description", "categories", "languages", "populations",
    "eligibility", "service_area", "hours", "intake", "accepting", "accepting_rank",
    "available", "unit", "capacity_updated_at", "capacity_updated_by",
)
_COLUMNS = (
    *(table_of(DirectoryService).c[name] for name in _LISTED),
    col(Agency.name).label("agency_name"),
)


@cache
def _search_query(
    terms: int, accepting: bool, q: bool, cursor: bool, postgres: bool
) -> Select[*tuple[Any, ...]]:
    """The page statement for one shape of search, built once: ``terms`` filter terms
    (bind parameter ``:terms``, a list, on PostgreSQL; ``:term0``, ``:term1``… each
    ``" term "`` elsewhere), and ``:rank``, ``:q``, the cursor's and ``:limit``."""
    s = DirectoryService
    stmt = (
        select(*_COLUMNS)
        .join(Agency, col(Agency.id) == col(s.agency_id))
        .where(col(Agency.status) == AgencyStatus.ACTIVE)
    )
    if terms and postgres:  # GIN: ix_directory_service_terms
        stmt = stmt.where(col(s.terms).op("@>")(bindparam("terms", type_=postgresql.ARRAY(Text))))
    else:
        for i in range(terms):
            stmt = stmt.where(func.instr(col(s.terms), bindparam(f"term{i}", type_=Text)) > 0)
    if accepting:
        stmt = stmt.where(col(s.accepting_rank) == bindparam("rank"))
    if q:
        stmt = stmt.where(col(s.search_text).like(bindparam("q"), escape="\\"))
    if cursor:
        stmt = stmt.where(
            tuple_(col(s.accepting_rank), col(s.capacity_updated_at), col(s.id))
            < tuple_(
                bindparam("after_rank"),
                bindparam("after_ts", type_=UTCDateTime()),
                bindparam("after_id"),
            )
        )
    return stmt.order_by(
        col(s.accepting_rank).desc(), col(s.capacity_updated_at).desc(), col(s.id).desc()
    ).limit(bindparam("limit", type_=Integer))


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_str = json.encoder.encode_basestring  # a JSON string, as json.dumps(ensure_ascii=False)


def _json_text(value: str | None) -> str:
    return "null" if value is None else _str(value)


def _item_json(row: Any) -> str:
    """A list item as JSON text: ``_item``'s members in its order, the stored JSON lists
    (categories, languages, populations, written by ``_row_values`` only) as they are."""
    available = "null" if row.available is None else str(int(row.available))
    return (
        f'{{"id":{_str(row.id)},"agency":{_str(row.agency_id)},'
        f'"agency_name":{_str(row.agency_name)},"name":{_str(row.name)},'
        f'"description":{_str(row.description)},"categories":{row.categories},'
        f'"languages":{row.languages},"populations":{row.populations},'
        f'"eligibility":{_json_text(row.eligibility)},'
        f'"service_area":{_json_text(row.service_area)},"hours":{_json_text(row.hours)},'
        f'"intake":{_json_text(row.intake)},"accepting":{_str(row.accepting)},'
        f'"capacity":{{"available":{available},"unit":{_str(row.unit)},'
        f'"updated_at":{_str(rfc3339(row.capacity_updated_at))},'
        f'"updated_by":{_json_text(row.capacity_updated_by)}}}}}'
    )


def _filter_terms(
    category: str | None, language: str | None, population: str | None
) -> tuple[list[str], str | None]:
    """The search terms of the filters given, and the language tag normalized (422 when
    it is not a language tag)."""
    terms: list[str] = []
    if category:
        terms.append(_term(CATEGORY, category))
    if population:
        terms.append(_term(POPULATION, population))
    normalized: str | None = None
    if language:
        try:
            normalized = langtags.normalize(language).lower()
        except langtags.LanguageTagError as exc:
            raise errors.Unprocessable(f"language: {exc}", slug="directory/language") from None
        terms.append(_term(LANGUAGE, normalized))
    return terms, normalized


async def search(
    db: AsyncSession,
    who: Principal,
    *,
    category: str | None,
    language: str | None,
    population: str | None,
    accepting: Accepting | None,
    q: str | None,
    limit: int,
    cursor: str | None,
) -> str:
    """One page of the directory as ``ServiceList`` JSON text."""
    terms, normalized = _filter_terms(category, language, population)
    postgres = is_postgres(db, DirectoryService)
    values: dict[str, Any] = {"limit": limit + 1}
    if postgres:
        values["terms"] = terms
    else:
        values.update((f"term{i}", f" {term} ") for i, term in enumerate(terms))
    if accepting:
        values["rank"] = ACCEPTING_RANK[accepting]
    if q:
        values["q"] = _like(q)
    if cursor:
        values["after_rank"], values["after_ts"], values["after_id"] = _decode_cursor(cursor)
    stmt = _search_query(len(terms), bool(accepting), bool(q), bool(cursor), postgres)
    rows = (await (await db.connection()).execute(stmt, values)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    await audit.record(
        db, who.actor, Action.DIRECTORY_SEARCH, "service", None,
        detail={
            "filters": {
                "category": category, "language": normalized,
                "population": population, "accepting": str(accepting) if accepting else None,
                "text": bool(q),
            },
            "count": len(rows),
        },
    )
    last = rows[-1] if more else None
    next_cursor = (
        _str(encode_cursor(last.accepting_rank, last.capacity_updated_at, last.id))
        if last else "null"
    )
    return f'{{"items":[{",".join(_item_json(r) for r in rows)}],"next_cursor":{next_cursor}}}'


# ---------------------------------------------------------------- HSDS export


async def export_hsds(db: AsyncSession, who: Principal) -> dict[str, Any]:
    """The directory as HSDS 3 organizations with their services (active agencies only):
    two statements, whatever the number of services."""
    agencies = (
        await db.execute(
            select(col(Agency.id), col(Agency.name), col(Agency.kind))
            .where(col(Agency.status) == AgencyStatus.ACTIVE)
            .order_by(col(Agency.name), col(Agency.id))
        )
    ).all()
    services = (
        await db.execute(
            select(DirectoryService)
            .join(Agency, col(Agency.id) == col(DirectoryService.agency_id))
            .where(col(Agency.status) == AgencyStatus.ACTIVE)
            .order_by(
                col(DirectoryService.agency_id),
                col(DirectoryService.name),
                col(DirectoryService.id),
            )
        )
    ).scalars().all()
    by_agency: dict[str, list[DirectoryService]] = {}
    for svc in services:
        by_agency.setdefault(svc.agency_id, []).append(svc)
    now = utcnow()
    organizations = [
        hsds.organization(a.id, a.name, a.kind, [hsds.service(s) for s in by_agency.get(a.id, [])])
        for a in agencies
    ]
    await audit.record(
        db, who.actor, Action.DIRECTORY_EXPORT, "service", None,
        detail={"organizations": len(organizations), "services": len(services)},
    )
    return {"hsds_version": hsds.VERSION, "generated_at": now, "organizations": organizations}
