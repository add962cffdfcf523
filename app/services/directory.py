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
statement whatever the number of services: each multi-valued filter is an
indexed equality on ``directory_term`` (a language filter matches by RFC 4647
basic filtering: ``es`` finds ``es-MX``), ``accepting`` is the leading column
of the ordering index, and the text filter ``q`` looks in the lowercased name
and description of the rows the other filters leave.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select
from sqlmodel import col

from app import authz, errors, langtags
from app.auth import Principal
from app.crypto.encoding import EncodingError, b64url_decode
from app.models.directory_schemas import CapacityPatch, ServiceIn, ServiceOut
from app.models.directory_tables import DirectoryService, DirectoryTerm
from app.models.schemas import rfc3339
from app.models.tables import Agency, table_of
from app.models.types import UTCDateTime, utcnow
from app.models.webhook_schemas import EventType
from app.services import audit, hsds, webhooks
from app.services.agencies import no_such_agency
from app.services.audit import Action, Actor
from app.vocab import Accepting

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
    }


def _term_rows(service_id: str, body: ServiceIn) -> list[dict[str, str]]:
    """The filterable values: categories, populations, and every language range that
    matches one of the service's tags."""
    ranges = sorted({r for tag in body.languages for r in langtags.prefixes(tag)})
    return [
        *({"kind": CATEGORY, "value": str(c), "service_id": service_id} for c in body.categories),
        *({"kind": POPULATION, "value": str(p), "service_id": service_id}
          for p in body.populations),
        *({"kind": LANGUAGE, "value": r, "service_id": service_id} for r in ranges),
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
    """Insert services of ``agency_id`` set-based (three statements, four on SQLite,
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
    terms = [t for service_id, body in zip(ids, bodies, strict=True)
             for t in _term_rows(service_id, body)]
    await db.execute(insert(DirectoryTerm), terms)
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
    await db.execute(delete(DirectoryTerm).where(col(DirectoryTerm.service_id) == service_id))
    await db.flush()
    await db.execute(insert(DirectoryTerm), _term_rows(service_id, body))
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
    await db.execute(delete(DirectoryTerm).where(col(DirectoryTerm.service_id) == service_id))
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


def _encode_cursor(rank: int, ts: datetime, service_id: str) -> str:
    raw = f"{rank}|{rfc3339(ts)}|{service_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, datetime, str]:
    try:
        rank, ts, service_id = b64url_decode(cursor).decode().split("|", 2)
        moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        if moment.tzinfo is None or rank not in ("0", "1", "2"):
            raise ValueError("not a cursor of this list")
        return int(rank), moment, service_id
    except (EncodingError, ValueError, UnicodeDecodeError, OverflowError):
        raise errors.BadRequest(
            "cursor is not valid: pass the next_cursor of the previous page unchanged",
            slug="invalid-cursor",
        ) from None


def _has(kind: str) -> Any:
    """The service has term (kind, :kind): an uncorrelated IN, so that the database reads
    the matching ids from the primary key of ``directory_term`` once (a range of it)
    rather than probing the terms of every service row."""
    return col(DirectoryService.id).in_(
        select(col(DirectoryTerm.service_id)).where(
            col(DirectoryTerm.kind) == kind, col(DirectoryTerm.value) == bindparam(kind)
        )
    )


_LISTED = (  # what a list item shows, and the row's place in the order (not search_text)
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
    category: bool, language: bool, population: bool, accepting: bool, q: bool, cursor: bool
) -> Select[*tuple[Any, ...]]:
    """The page statement for one combination of filters, built once (bind parameters
    ``:category``, ``:language``, ``:population``, ``:rank``, ``:q`` and the cursor's)."""
    s = DirectoryService
    stmt = (
        select(*_COLUMNS)
        .join(Agency, col(Agency.id) == col(s.agency_id))
        .where(col(Agency.status) == "active")
    )
    for kind, present in ((CATEGORY, category), (LANGUAGE, language), (POPULATION, population)):
        if present:
            stmt = stmt.where(_has(kind))
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
    )


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


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
    values: dict[str, Any] = {}
    if category:
        values[CATEGORY] = category
    if population:
        values[POPULATION] = population
    if language:
        try:
            values[LANGUAGE] = langtags.normalize(language).lower()
        except langtags.LanguageTagError as exc:
            raise errors.Unprocessable(f"language: {exc}", slug="directory/language") from None
    if accepting:
        values["rank"] = ACCEPTING_RANK[accepting]
    if q:
        values["q"] = _like(q)
    if cursor:
        values["after_rank"], values["after_ts"], values["after_id"] = _decode_cursor(cursor)
    stmt = _search_query(
        bool(category), bool(language), bool(population), bool(accepting), bool(q), bool(cursor)
    )
    rows = (await db.execute(stmt.limit(limit + 1), values)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [_item(r, r.agency_name) for r in rows]
    await audit.record(
        db, who.actor, Action.DIRECTORY_SEARCH, "service", None,
        detail={
            "filters": {
                "category": category, "language": values.get(LANGUAGE),
                "population": population, "accepting": str(accepting) if accepting else None,
                "text": bool(q),
            },
            "count": len(items),
        },
    )
    last = rows[-1] if more else None
    next_cursor = (
        _encode_cursor(last.accepting_rank, last.capacity_updated_at, last.id) if last else None
    )
    return json.dumps({"items": items, "next_cursor": next_cursor}, ensure_ascii=False,
                      separators=(",", ":"))


# ---------------------------------------------------------------- HSDS export


async def export_hsds(db: AsyncSession, who: Principal) -> dict[str, Any]:
    """The directory as HSDS 3 organizations with their services (active agencies only):
    two statements, whatever the number of services."""
    agencies = (
        await db.execute(
            select(col(Agency.id), col(Agency.name), col(Agency.kind))
            .where(col(Agency.status) == "active")
            .order_by(col(Agency.name), col(Agency.id))
        )
    ).all()
    services = (
        await db.execute(
            select(DirectoryService)
            .join(Agency, col(Agency.id) == col(DirectoryService.agency_id))
            .where(col(Agency.status) == "active")
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
