"""Reading the audit log: queries, streamed exports, checkpoints and proofs.

Auditors read everything; an agency's caseworkers and liaisons read the events
they caused and the events about their own referrals and keys (``actor_agency``
or ``subject_agency`` is theirs). Every read of the log is itself an event.
Proofs read O(log n) node rows in one statement (``sequencer.load_nodes``).

A query page is answered from the stored ``canonical`` column as it is: that
text is the RFC 8785 encoding of the event object, so it is spliced into the
response as the item's ``event`` without being parsed and re-serialized.
"""

from __future__ import annotations

import csv
import io
import json
import operator
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Integer, bindparam, func, or_, select, tuple_, union_all
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql import Select
from sqlmodel import col

from app import errors
from app.authz import audit as audit_policy
from app.config import Settings
from app.crypto import merkle
from app.crypto.encoding import b64_encode
from app.cursor import decode_leaf_time_id, encode
from app.db import prepared
from app.dialect import is_postgres
from app.identity import Principal
from app.models.tables import AuditCheckpoint, AuditEvent, AuditLeaf, AuditTreeState, table_of
from app.models.types import leaf_time_text
from app.services import audit, witnesses
from app.services.audit import Action
from app.services.sequencer import load_nodes

EXPORT_CHUNK = 1000
CSV_COLUMNS = (
    "seq",
    "leaf_hash",
    "event_id",
    "ts",
    "actor",
    "actor_agency",
    "role",
    "action",
    "resource_type",
    "resource_id",
    "subject_agency",
    "outcome",
    "request_id",
    "client_request_id",
    "purpose",
    "grant",
    "detail",
)


@dataclass(frozen=True)
class EventFilter:
    actor: str | None = None
    agency: str | None = None
    resource_id: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def as_detail(self) -> dict[str, Any]:
        return {
            k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in vars(self).items()
            if v is not None
        }


def _scoped(
    stmt: Select[*tuple[Any, ...]], who: Principal, f: EventFilter
) -> Select[*tuple[Any, ...]]:
    visible = audit_policy.visible_to(who)
    if visible is not None:
        stmt = stmt.where(visible)
    if f.actor:
        stmt = stmt.where(col(AuditEvent.actor) == f.actor)
    if f.agency:
        stmt = stmt.where(audit_policy.concerns(f.agency))
    if f.resource_id:
        stmt = stmt.where(col(AuditEvent.resource_id) == f.resource_id)
    if f.action:
        stmt = stmt.where(col(AuditEvent.action) == f.action)
    if f.outcome:
        stmt = stmt.where(col(AuditEvent.outcome) == f.outcome)
    if f.since:
        stmt = stmt.where(col(AuditEvent.ts_leaf) >= leaf_time(f.since))
    if f.until:
        stmt = stmt.where(col(AuditEvent.ts_leaf) < leaf_time(f.until))
    return stmt


def leaf_time(moment: datetime) -> str:
    """``moment`` as the leaf's ``ts`` spells times: fixed width, so text order is time order."""
    return leaf_time_text(moment.astimezone(UTC))


def _base() -> Select[*tuple[Any, ...]]:
    return select(
        col(AuditEvent.id), col(AuditEvent.canonical), col(AuditLeaf.seq), col(AuditLeaf.leaf_hash)
    ).outerjoin(
        AuditLeaf,
        col(AuditLeaf.event_id) == col(AuditEvent.id),
    )


def _item(canonical: str, seq: int | None, leaf: bytes | None) -> dict[str, Any]:
    return {
        "seq": seq,
        "event": json.loads(canonical),
        "leaf_hash": b64_encode(leaf) if leaf is not None else None,
    }


_FILTER_COLUMNS: tuple[tuple[str, Any, Callable[[Any, Any], Any]], ...] = (
    ("actor", col(AuditEvent.actor), operator.eq),
    ("resource_id", col(AuditEvent.resource_id), operator.eq),
    ("action", col(AuditEvent.action), operator.eq),
    ("outcome", col(AuditEvent.outcome), operator.eq),
    ("since", col(AuditEvent.ts_leaf), operator.ge),
    ("until", col(AuditEvent.ts_leaf), operator.lt),
)


def _page(
    who: Principal, f: EventFilter, before: tuple[str, int] | None, n: int
) -> tuple[Any, dict[str, Any]]:
    """The newest ``n`` matching events (id, canonical, ts_leaf, seq, leaf_hash), newest
    first: the statement (built once per shape of filter, see ``_page_query``) and its
    values. ``before`` is the (ts_leaf, id) of the last event of the previous page."""
    values: dict[str, Any] = {"lim": n}
    present = []
    for name, _, _ in _FILTER_COLUMNS:
        value = getattr(f, name)
        if value:
            values[name] = leaf_time(value) if isinstance(value, datetime) else value
            present.append(name)
    if before is not None:
        values["before_ts"], values["before_id"] = before
    agency = f.agency
    own_too = False
    own = audit_policy.own_agency(who)
    if own is not None:
        if agency is None or agency == own:
            agency = own
        else:  # two agency conditions: the caller's own stays a plain filter
            own_too = True
            values["me"] = own
    if agency is not None:
        values["agency"] = agency
    shape = (tuple(present), before is not None, agency is not None, own_too)
    return _page_query(*shape), values


def _newest_first(ts_leaf: Any, event_id: Any) -> tuple[Any, Any]:
    return ts_leaf.desc(), event_id.desc()


@cache
def _page_query(
    present: tuple[str, ...], paged: bool, by_agency: bool, own_too: bool
) -> Select[*tuple[Any, ...]]:
    """A page of events for one shape of filter, with bind parameters.

    Newest first means by the event's own time (``ts_leaf``, what its leaf says),
    then by id, and every filter index is ``(column, ts_leaf, id)``: a page is one
    backward range scan of one index, whatever the filters and however far back a
    ``since``/``until`` window lies. (Ordered by id alone, a window in the past
    made PostgreSQL walk every newer event of the filter first: 1.4 s for an
    agency's week a year back in a log of 10,000,000 events; bench/RESULTS.md.)

    "Agency X" means ``actor_agency = X OR subject_agency = X``; an OR across two
    columns can use neither index in order, so it is run as a UNION ALL of two
    index scans, each stopped after ``:lim`` rows (the second leaves out what the
    first matches), merged and cut to ``:lim``. The same rows as
    ``_scoped(...).order_by(ts_leaf desc, id desc).limit(lim)``.
    """
    common = _conditions(present, paged, own_too)
    lim = bindparam("lim", type_=Integer())
    if not by_agency:
        return (
            select(
                col(AuditEvent.id), col(AuditEvent.canonical), col(AuditEvent.ts_leaf),
                col(AuditLeaf.seq), col(AuditLeaf.leaf_hash),
            )
            .outerjoin(AuditLeaf, col(AuditLeaf.event_id) == col(AuditEvent.id))
            .where(*common)
            .order_by(*_newest_first(col(AuditEvent.ts_leaf), col(AuditEvent.id)))
            .limit(lim)
        )
    both = _agency_union(common, lim)
    return (
        select(
            both.c.id, both.c.canonical, both.c.ts_leaf, col(AuditLeaf.seq),
            col(AuditLeaf.leaf_hash),
        )
        .outerjoin(AuditLeaf, col(AuditLeaf.event_id) == both.c.id)
        .order_by(*_newest_first(both.c.ts_leaf, both.c.id))
        .limit(lim)
    )


def _conditions(
    present: tuple[str, ...], paged: bool, own_too: bool
) -> list[ColumnElement[bool]]:
    """The filters present, the cursor's position and the caller's own agency, as
    conditions on bind parameters."""
    common: list[ColumnElement[bool]] = []
    for name, column, compare in _FILTER_COLUMNS:
        if name in present:
            common.append(compare(column, bindparam(name, type_=column.type)))
    if paged:
        after = tuple_(
            bindparam("before_ts", type_=table_of(AuditEvent).c.ts_leaf.type),
            bindparam("before_id", type_=table_of(AuditEvent).c.id.type),
        )
        common.append(tuple_(col(AuditEvent.ts_leaf), col(AuditEvent.id)) < after)
    if own_too:
        me = bindparam("me", type_=table_of(AuditEvent).c.actor_agency.type)
        common.append(audit_policy.concerns(me))
    return common


def _agency_union(common: list[ColumnElement[bool]], lim: Any) -> Any:
    """The newest ``:lim`` events acted by ``:agency`` and the newest ``:lim`` about it
    (not acted by it), each one index scan, as one UNION ALL subquery."""
    agency = bindparam("agency", type_=table_of(AuditEvent).c.actor_agency.type)
    row = (col(AuditEvent.id), col(AuditEvent.canonical), col(AuditEvent.ts_leaf))
    order = _newest_first(col(AuditEvent.ts_leaf), col(AuditEvent.id))
    by_actor = (
        select(*row)
        .where(col(AuditEvent.actor_agency) == agency, *common)
        .order_by(*order)
        .limit(lim)
        .subquery()
    )
    by_subject = (
        select(*row)
        .where(
            col(AuditEvent.subject_agency) == agency,
            or_(col(AuditEvent.actor_agency).is_(None), col(AuditEvent.actor_agency) != agency),
            *common,
        )
        .order_by(*order)
        .limit(lim)
        .subquery()
    )
    return union_all(select(by_actor), select(by_subject)).subquery()


def _item_json(canonical: str, seq: int | None, leaf: bytes | None) -> str:
    """``_item`` as JSON text, with the stored canonical event spliced in verbatim."""
    return (
        '{"seq":'
        + ("null" if seq is None else str(int(seq)))
        + ',"event":'
        + canonical
        + ',"leaf_hash":'
        + ("null" if leaf is None else '"' + b64_encode(leaf) + '"')
        + "}"
    )


async def query_json(
    db: AsyncSession, who: Principal, f: EventFilter, *, limit: int, cursor: str | None
) -> bytes:
    """Events newest first (by their time, then id), keyset-paginated on both, as the
    JSON of an ``AuditList`` (``{"items": [{"seq", "event", "leaf_hash"}], "next_cursor"}``)."""
    before = decode_leaf_time_id(cursor) if cursor else None
    stmt, values = _page(who, f, before, limit + 1)
    rows = await prepared(stmt).all(db, values)
    more = len(rows) > limit
    rows = rows[:limit]
    await audit.record(
        db,
        who.actor,
        Action.AUDIT_QUERY,
        "audit_log",
        None,
        detail={"filter": f.as_detail(), "count": len(rows)},
    )
    next_cursor = encode(rows[-1][2], rows[-1][0]) if more and rows else None
    items = ",".join(_item_json(c, s, h) for _, c, _, s, h in rows)
    body = '{"items":[' + items + '],"next_cursor":' + json.dumps(next_cursor) + "}"
    return body.encode("utf-8")


async def start_export(
    db: AsyncSession,
    maker: async_sessionmaker[AsyncSession],
    who: Principal,
    f: EventFilter,
    fmt: str,
) -> AsyncIterator[bytes]:
    """Record the ``audit:export`` event (in the request's transaction) and give the
    stream of ``export``, which runs after that transaction committed."""
    await audit.record(
        db, who.actor, Action.AUDIT_EXPORT, "audit_log", None,
        detail={"filter": f.as_detail(), "format": fmt},
    )
    return export(maker, who, f, fmt)


async def export(
    maker: async_sessionmaker[AsyncSession], who: Principal, f: EventFilter, fmt: str
) -> AsyncIterator[bytes]:
    """Stream matching events in log order (sequenced by seq, then pending by id).

    One read-only snapshot (REPEATABLE READ on PostgreSQL; a single read
    transaction on SQLite's WAL) so an event sequenced mid-export is neither
    lost nor repeated; rows are streamed from a server-side cursor
    ``EXPORT_CHUNK`` at a time, so memory stays constant whatever the log's size.
    """
    if fmt == "csv":
        yield (",".join(CSV_COLUMNS) + "\n").encode()
    sequenced = (
        _scoped(_base(), who, f).where(col(AuditLeaf.seq).is_not(None)).order_by(col(AuditLeaf.seq))
    )
    pending = (
        _scoped(_base(), who, f).where(col(AuditLeaf.seq).is_(None)).order_by(col(AuditEvent.id))
    )
    async with maker() as db:
        # the session's first connection use begins the snapshot transaction,
        # which closing the session ends (nothing is written); the bind of the audit
        # tables, not .bind: a session bound per table (binds=...) has no .bind
        if is_postgres(db, AuditEvent):
            await db.connection(
                bind_arguments={"mapper": AuditEvent},
                execution_options={
                    "isolation_level": "REPEATABLE READ",
                    "postgresql_readonly": True,
                }
            )
        for stmt in (sequenced, pending):
            result = await db.stream(stmt.execution_options(yield_per=EXPORT_CHUNK))
            async for rows in result.partitions(EXPORT_CHUNK):
                yield _render(rows, fmt)


def _render(rows: Any, fmt: str) -> bytes:
    if fmt == "ndjson":
        return "".join(
            json.dumps(_item(c, s, h), separators=(",", ":")) + "\n" for _, c, s, h in rows
        ).encode()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for _, c, s, h in rows:
        e = json.loads(c)
        writer.writerow(
            [
                s,
                b64_encode(h) if h is not None else "",
                e["event_id"],
                e["ts"],
                e["actor"],
                e["actor_agency"],
                e["role"],
                e["action"],
                e["resource_type"],
                e["resource_id"],
                e["subject_agency"],
                e["outcome"],
                e["request_id"],
                e.get("client_request_id") or "",
                e["purpose"],
                json.dumps(e["grant"], separators=(",", ":")) if e["grant"] is not None else "",
                json.dumps(e["detail"], separators=(",", ":")),
            ]
        )
    return buf.getvalue().encode()


async def event_at(db: AsyncSession, who: Principal, seq: int) -> dict[str, Any]:
    stmt = _scoped(_base(), who, EventFilter()).where(col(AuditLeaf.seq) == seq)
    row = (await db.execute(stmt)).first()
    if row is None:
        raise errors.NotFound(
            f"no event at seq {seq} visible to the caller",
            audit=audit.denied(
                who.actor, Action.AUDIT_READ, "audit_event", str(seq), {"reason": "not visible"}
            ),
        )
    await audit.record(db, who.actor, Action.AUDIT_READ, "audit_event", str(seq))
    return _item(row[1], row[2], row[3])


async def latest_checkpoint(db: AsyncSession) -> AuditCheckpoint:
    cp = await db.scalar(
        select(AuditCheckpoint).order_by(col(AuditCheckpoint.tree_size).desc()).limit(1)
    )
    if cp is None:
        raise errors.ServiceUnavailable(
            "no checkpoint has been signed yet; retry shortly", headers={"Retry-After": "1"}
        )
    return cp


async def read_checkpoint(
    db: AsyncSession, who: Principal, settings: Settings, cosigned: int | None = None
) -> str:
    """The latest signed checkpoint's note with its witness cosignatures (or the latest
    with at least ``cosigned`` of them), as an auditor reads it (an audited read)."""
    cp, note = await witnesses.cosigned_note(db, settings, cosigned)
    await audit.record(
        db,
        who.actor,
        Action.AUDIT_CHECKPOINT,
        "audit_log",
        None,
        detail={"tree_size": cp.tree_size, "cosigned": cosigned or 0},
    )
    return note


# The log's size and the latest signed size, in one statement.
_SIZES = select(
    col(AuditTreeState.size),
    select(func.max(col(AuditCheckpoint.tree_size))).scalar_subquery(),
)


async def _proof_size(db: AsyncSession, requested: int | None) -> tuple[int, int]:
    """(tree size the proof is for, the log's current size), read in one statement.

    Without ``requested`` the proof is for the latest signed checkpoint (503 when
    none is signed yet).
    """
    head, signed = (await prepared(_SIZES).all(db, {}))[0]
    if requested is not None:
        return requested, int(head)
    if signed is None:
        raise errors.ServiceUnavailable(
            "no checkpoint has been signed yet; retry shortly", headers={"Retry-After": "1"}
        )
    return int(signed), int(head)


def _check_beyond(size: int, head: int) -> None:
    if size > head:
        raise errors.Unprocessable(
            f"tree_size {size} is beyond the log's size {head}", slug="beyond-tree"
        )


async def inclusion(
    db: AsyncSession, who: Principal, seq: int, tree_size: int | None
) -> dict[str, Any]:
    size, head = await _proof_size(db, tree_size)
    if not 0 <= seq < size:
        raise errors.Unprocessable(f"seq must be in [0, {size})", slug="out-of-range")
    _check_beyond(size, head)
    nodes = await load_nodes(db, merkle.inclusion_proof_coords(seq, size))
    hashes = merkle.inclusion_proof(seq, size, nodes)
    await audit.record(
        db,
        who.actor,
        Action.AUDIT_PROOF,
        "audit_log",
        str(seq),
        detail={"kind": "inclusion", "tree_size": size},
    )
    return {"index": seq, "tree_size": size, "hashes": [b64_encode(h) for h in hashes]}


async def consistency(
    db: AsyncSession, who: Principal, first: int, second: int | None
) -> dict[str, Any]:
    size, head = await _proof_size(db, second)
    if not 0 <= first <= size:
        raise errors.Unprocessable("need 0 <= first <= second", slug="out-of-range")
    _check_beyond(size, head)
    nodes = await load_nodes(db, merkle.consistency_proof_coords(first, size))
    hashes = merkle.consistency_proof(first, size, nodes)
    await audit.record(
        db,
        who.actor,
        Action.AUDIT_PROOF,
        "audit_log",
        None,
        detail={"kind": "consistency", "first": first, "second": size},
    )
    return {"first": first, "second": size, "hashes": [b64_encode(h) for h in hashes]}
