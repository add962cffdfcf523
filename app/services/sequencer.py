"""The audit sequencer: committed events → contiguous log positions → Merkle tree.

Guarantees:
- Positions (``audit_leaf.seq``) are contiguous from 0 and never reused: a batch
  takes the tree-state row first (an UPDATE, which locks it on PostgreSQL and
  takes SQLite's write lock), so integrations are serialized across workers;
  the leaves, new tree nodes, the new size/root and the removal of the events
  from ``audit_pending`` commit together or not at all. A crash between batches
  loses nothing and a retried batch cannot duplicate.
- Only events whose transaction committed are visible in ``audit_pending``, so
  a rolled-back action never gets a position, and an event committed late (a
  lower id committing after a higher one) is still picked up.
- The tree is stored as perfect-subtree nodes, so proofs read O(log n) rows.
- On PostgreSQL a batch is five statements whatever its size: the locking
  UPDATE, one SELECT of the oldest queued events, COPY of the leaves and of
  the nodes (on the session's own connection, inside its transaction),
  ``refgate_dequeue`` of the integrated events, and the final UPDATE of the
  head; a batch holding key events adds two (read the directory, insert its
  new entries). SQLite takes the same steps with executemany.
- One runner per deployment does the work: on PostgreSQL it holds an advisory
  lock on its own connection, and another worker takes over when it dies; the
  row lock above keeps even two runners correct.
- A checkpoint (C2SP signed note) is signed after a batch, at most once per
  ``checkpoint_interval`` under load; its primary key is the tree size.
- Key directory (DESIGN.md "Key transparency"): the directory is derived from
  the log, not kept beside it. Each batch folds the key events it integrates
  (``app.crypto.keydir.apply_event``, at their new log positions) into
  ``directory_entry`` rows and stores the directory's size and root in the
  tree-state row with the new tree head, in the same transaction. So the
  directory a checkpoint of size N commits to (its ``directory`` line) is
  exactly the fold of the first N events, which ``audit verify --full``
  recomputes. The key event itself is written in the transaction of the
  action (``app.services.agencies``); until a checkpoint covers it, clients
  keep seeing the previous state, and retry.
- Completeness: the queue cannot lose an event. A queue row can only be
  deleted once its event has a leaf (a trigger; on PostgreSQL the deployment
  role has no DELETE on the queue and dequeues through ``refgate_dequeue``).
  A sweep (every ``SWEEP_INTERVAL`` seconds and in ``run_once``) puts back any
  committed event found outside both the tree and the queue (a superuser's
  delete), so it is integrated after all.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, delete, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.types import BigInteger, Integer, LargeBinary
from sqlmodel import col

from app.config import Settings
from app.crypto import checkpoint, keydir, merkle
from app.crypto.canonical import canonical_json
from app.db import Prepared, database_key
from app.dialect import is_postgres
from app.models.tables import (
    AuditCheckpoint,
    AuditEvent,
    AuditLeaf,
    AuditNode,
    AuditPending,
    AuditTreeState,
    DirectoryEntry,
    table_of,
)
from app.models.types import utcnow
from app.services.leader import LeaderRunner
from app.services.server_keys import ServerKeys

log = logging.getLogger("refgate.sequencer")
ADVISORY_LOCK_KEY = 0x7265_6667_6174_65  # "refgate"
SWEEP_INTERVAL = 60.0
"""Seconds between two sweeps for committed events outside the tree and the queue."""


@dataclass(frozen=True)
class TreeHead:
    size: int
    root: bytes
    directory_size: int = 0
    directory_root: bytes = merkle.EMPTY_ROOT


# One statement text whatever the number of nodes: PostgreSQL plans and caches it once.
_PG_NODES = Prepared(
    text(
        "SELECT n.level, n.idx, n.hash FROM audit_node n "
        "JOIN unnest(:levels, :idxs) AS c(level, idx) ON n.level = c.level AND n.idx = c.idx"
    )
    .bindparams(
        bindparam("levels", type_=ARRAY(Integer)),
        bindparam("idxs", type_=ARRAY(BigInteger)),
    )
    .columns(level=Integer, idx=BigInteger, hash=LargeBinary)
)

# Reads the oldest committed pending events; the caller holds the tree-state row
# lock, so no other batch races it. They leave the queue once their leaves exist.
# The queue is read first, whatever the statistics say: planned as one join, a queue
# whose statistics said "empty" (autovacuum off or behind) had PostgreSQL walk the
# whole log in id order to find the few pending events (42 ms a batch at 266,000
# events in a bench run, growing with the log; a few index probes now).
_PG_PENDING = (
    "WITH p AS MATERIALIZED (SELECT event_id FROM audit_pending ORDER BY event_id LIMIT $1) "
    "SELECT p.event_id, e.canonical FROM p JOIN audit_event e ON e.id = p.event_id "
    "ORDER BY p.event_id"
)
_PG_DEQUEUE = "SELECT refgate_dequeue($1::bigint[])"

# Committed events in neither the tree nor the queue, put back in the queue.
_REQUEUE = text(
    "INSERT INTO audit_pending (event_id) SELECT e.id FROM audit_event e "
    "WHERE NOT EXISTS (SELECT 1 FROM audit_leaf l WHERE l.event_id = e.id) "
    "AND NOT EXISTS (SELECT 1 FROM audit_pending p WHERE p.event_id = e.id)"
)

# Per agency, its newest directory entry (below a tree size when :below is set).
_DIRECTORY_AT = text(
    "SELECT d.leaf FROM directory_entry d JOIN "
    "(SELECT agency, max(seq) AS m FROM directory_entry WHERE seq < :below GROUP BY agency) x "
    "ON x.agency = d.agency AND x.m = d.seq"
)
_KEY_EVENT_MARKS = tuple(f'"action":"{a}"' for a in sorted(keydir.KEY_ACTIONS))


# Perfect-subtree hashes never change once written (append-only, and each is
# determined by its leaves), so a worker keeps the upper levels' in memory: a
# proof's upper half then costs no read. At 10,000,000 events the levels from
# CACHED_LEVEL up are about 40,000 hashes (a few MB); the lower levels, a different
# few for every proof, are read. Keyed by database (tests run several in a process).
CACHED_LEVEL = 8
_NODE_CACHE_MAX = 200_000
_node_cache: dict[tuple[str, int, int], bytes] = {}


async def load_nodes(
    session: AsyncSession, coords: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """Fetch perfect-subtree hashes: the upper levels' from memory, the rest in one statement."""
    if not coords:
        return {}
    db_key = database_key(session.get_bind(AuditNode))
    found: dict[tuple[int, int], bytes] = {}
    missing: list[tuple[int, int]] = []
    for lv, ix in coords:
        cached = _node_cache.get((db_key, lv, ix)) if lv >= CACHED_LEVEL else None
        if cached is None:
            missing.append((lv, ix))
        else:
            found[(lv, ix)] = cached
    if not missing:
        return found
    rows: Sequence[Any]
    if is_postgres(session, AuditNode):  # a proof's hot path: on asyncpg directly in a GET
        rows = await _PG_NODES.all(
            session, {"levels": [lv for lv, _ in missing], "idxs": [ix for _, ix in missing]}
        )
    else:
        conn = await session.connection()
        rows = list(await conn.execute(
            select(col(AuditNode.level), col(AuditNode.idx), col(AuditNode.hash)).where(
                tuple_(col(AuditNode.level), col(AuditNode.idx)).in_(missing)
            )
        ))
    for lv, ix, h in rows:
        found[(lv, ix)] = h
        if lv >= CACHED_LEVEL:
            if len(_node_cache) >= _NODE_CACHE_MAX:
                _node_cache.clear()
            _node_cache[(db_key, lv, ix)] = h
    return found


async def tree_head(session: AsyncSession) -> TreeHead:
    row = (
        await session.execute(
            select(
                col(AuditTreeState.size),
                col(AuditTreeState.root),
                col(AuditTreeState.directory_size),
                col(AuditTreeState.directory_root),
            )
        )
    ).one()
    return TreeHead(
        size=row[0], root=row[1], directory_size=row[2], directory_root=row[3] or merkle.EMPTY_ROOT
    )


async def _driver_connection(session: AsyncSession) -> Any:
    """The asyncpg connection under the session, inside the session's transaction."""
    raw = await (await session.connection()).get_raw_connection()
    return raw.driver_connection


async def copy_tree_rows(
    pg: Any,
    first_seq: int,
    event_ids: Sequence[int],
    leaves: Sequence[bytes],
    nodes: Sequence[tuple[int, int, bytes]],
) -> None:
    """PostgreSQL: write leaves ``first_seq``.. and new nodes with COPY on asyncpg
    connection ``pg``, in whatever transaction it is in."""
    await pg.copy_records_to_table(
        "audit_leaf",
        records=[(first_seq + i, event_id, leaves[i]) for i, event_id in enumerate(event_ids)],
        columns=["seq", "event_id", "leaf_hash"],
    )
    await pg.copy_records_to_table("audit_node", records=nodes, columns=["level", "idx", "hash"])


async def directory_state(session: AsyncSession, below: int) -> dict[str, dict[str, Any]]:
    """{agency: leaf} of the directory committed by the tree of size ``below``."""
    rows = await session.execute(_DIRECTORY_AT, {"below": below})
    out: dict[str, dict[str, Any]] = {}
    for (leaf,) in rows:
        parsed = json.loads(leaf)
        out[parsed["agency"]] = parsed
    return out


async def requeue_lost(session: AsyncSession) -> int:
    """Put committed events found outside the tree and the queue back in the queue."""
    # an INSERT's result is a CursorResult (AsyncSession.execute is typed as Result)
    result = cast(CursorResult[Any], await session.execute(_REQUEUE))
    lost = int(result.rowcount or 0)
    if lost:
        log.warning(
            "requeued %d committed audit event(s) missing from the sequencing queue", lost
        )
    return lost


async def _fold_directory(
    session: AsyncSession, size: int, pending: Sequence[Any]
) -> tuple[int, bytes] | None:
    """Fold the key events of a batch starting at log position ``size`` into the
    directory: new ``directory_entry`` rows, and the new (size, root), or ``None``
    when the batch holds no key event."""
    keyed = [
        (size + i, canonical)
        for i, (_, canonical) in enumerate(pending)
        if any(mark in canonical for mark in _KEY_EVENT_MARKS)
    ]
    if not keyed:
        return None
    state = await directory_state(session, size)
    entries = []
    for seq, canonical in keyed:
        agency = keydir.apply_event(state, seq, json.loads(canonical))
        if agency is not None:
            entries.append(
                {"seq": seq, "agency": agency, "leaf": canonical_json(state[agency]).decode()}
            )
    if not entries:
        return None
    await session.execute(insert(table_of(DirectoryEntry)), entries)
    return keydir.root_of(keydir.sorted_leaves(state))


async def _lock_tree(session: AsyncSession) -> int:
    """Lock the tree state row (one sequencer at a time) and return the tree size."""
    locked = (
        await session.execute(
            update(AuditTreeState)
            .where(col(AuditTreeState.id) == 1)
            .values(updated_at=utcnow())
            .returning(col(AuditTreeState.size))
        )
    ).scalar_one()
    return int(locked)


async def _pending(session: AsyncSession, pg: Any, batch_size: int) -> Sequence[Any]:
    """Up to ``batch_size`` queued (event id, canonical event), oldest first; through
    the asyncpg connection ``pg`` on PostgreSQL (None on SQLite)."""
    if pg is not None:
        rows: Sequence[Any] = await pg.fetch(_PG_PENDING, batch_size)
        return rows
    return (
        await session.execute(
            select(col(AuditPending.event_id), col(AuditEvent.canonical))
            .join(AuditEvent, col(AuditEvent.id) == col(AuditPending.event_id))
            .order_by(col(AuditPending.event_id))
            .limit(batch_size)
        )
    ).all()


async def _store_leaves(
    session: AsyncSession,
    pg: Any,
    size: int,
    event_ids: Sequence[int],
    leaves: Sequence[bytes],
    new_nodes: Sequence[tuple[int, int, bytes]],
) -> None:
    """Write the new leaves and nodes and dequeue their events (by COPY on PostgreSQL,
    through ``pg``; by executemany on SQLite)."""
    if pg is not None:
        await copy_tree_rows(pg, size, event_ids, leaves, new_nodes)
        await pg.fetchval(_PG_DEQUEUE, event_ids)
        return
    await session.execute(
        insert(table_of(AuditLeaf)),
        [
            {"seq": size + i, "event_id": event_id, "leaf_hash": leaves[i]}
            for i, event_id in enumerate(event_ids)
        ],
    )
    await session.execute(
        insert(table_of(AuditNode)),
        [{"level": lv, "idx": ix, "hash": h} for lv, ix, h in new_nodes],
    )
    await session.execute(delete(AuditPending).where(col(AuditPending.event_id).in_(event_ids)))


async def integrate_batch(session: AsyncSession, batch_size: int, *, sweep: bool = False) -> int:
    """Integrate up to ``batch_size`` pending events in the caller's transaction
    (after putting lost events back in the queue when ``sweep``)."""
    size = await _lock_tree(session)
    if sweep:
        await requeue_lost(session)
    pg = await _driver_connection(session) if is_postgres(session, AuditTreeState) else None
    pending = await _pending(session, pg, batch_size)
    if not pending:
        return 0
    coords = merkle.frontier_coords(size)
    nodes = await load_nodes(session, coords)
    frontier = [nodes[c] for c in coords]
    leaf_hash = merkle.leaf_hash
    leaves = [leaf_hash(canonical.encode("utf-8")) for _, canonical in pending]
    new_nodes, new_frontier = merkle.append_leaves(size, frontier, leaves)
    await _store_leaves(session, pg, size, [row[0] for row in pending], leaves, new_nodes)
    head: dict[str, Any] = {
        "size": size + len(pending),
        "root": merkle.root_from_frontier(new_frontier),
    }
    directory = await _fold_directory(session, size, pending)
    if directory is not None:
        head["directory_size"], head["directory_root"] = directory
    await session.execute(update(AuditTreeState).where(col(AuditTreeState.id) == 1).values(**head))
    return len(pending)


async def sign_checkpoint(
    session: AsyncSession, settings: Settings, server_keys: ServerKeys
) -> AuditCheckpoint | None:
    """Sign the current tree head unless a checkpoint for its size exists.

    The tree state row is locked first, as ``integrate_batch`` locks it, so that two
    signers (the leader's runner and a ``run_once`` at shutdown, by the CLI or a test)
    take turns: the second then finds the first one's checkpoint and signs nothing,
    where both used to find none and the second insert failed on the tree size.
    """
    await _lock_tree(session)
    head = await tree_head(session)
    if await session.get(AuditCheckpoint, head.size) is not None:
        return None
    note = checkpoint.sign_checkpoint(
        settings.audit.log_origin,
        head.size,
        head.root,
        server_keys.log_seed,
        extensions=(checkpoint.directory_line(head.directory_size, head.directory_root),),
    )
    cp = AuditCheckpoint(tree_size=head.size, root=head.root, note=note)
    session.add(cp)
    await session.flush()
    return cp


async def run_once(
    maker: async_sessionmaker[AsyncSession], settings: Settings, server_keys: ServerKeys
) -> int:
    """Integrate everything pending and sign a checkpoint (tests, CLI, shutdown)."""
    total = 0
    sweep = True
    while True:
        async with maker() as session, session.begin():
            n = await integrate_batch(session, settings.audit.batch_size, sweep=sweep)
        sweep = False
        total += n
        if n < settings.audit.batch_size:
            break
    async with maker() as session, session.begin():
        await sign_checkpoint(session, settings, server_keys)
    return total


class SequencerRunner(LeaderRunner):
    """Integrates pending events and signs checkpoints, in the one leader worker."""

    name = "audit-sequencer"
    lock_key = ADVISORY_LOCK_KEY

    def __init__(
        self,
        engine: AsyncEngine,
        maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        server_keys: ServerKeys,
    ) -> None:
        super().__init__(engine)
        self.maker = maker
        self.settings = settings
        self.server_keys = server_keys
        self.last_checkpoint_at = 0.0
        self.last_sweep_at = 0.0

    def idle_seconds(self) -> float:
        return self.settings.audit.poll_interval

    async def step(self) -> bool:
        audit = self.settings.audit
        sweep = time.monotonic() - self.last_sweep_at >= SWEEP_INTERVAL
        async with self.maker() as session, session.begin():
            n = await integrate_batch(session, audit.batch_size, sweep=sweep)
        if sweep:
            self.last_sweep_at = time.monotonic()
        now = time.monotonic()
        if now - self.last_checkpoint_at >= audit.checkpoint_interval:
            async with self.maker() as session, session.begin():
                signed = await sign_checkpoint(session, self.settings, self.server_keys)
            if signed is not None:
                self.last_checkpoint_at = now
        return n == audit.batch_size
