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
- On PostgreSQL a batch is four statements whatever its size: the locking
  UPDATE, one DELETE … RETURNING that takes the batch out of ``audit_pending``
  and reads its events, COPY of the leaves and of the nodes (on the session's
  own connection, inside its transaction), and the final UPDATE of the head.
  SQLite takes the same steps with executemany.
- One runner per deployment does the work: on PostgreSQL it holds an advisory
  lock on its own connection, and another worker takes over when it dies; the
  row lock above keeps even two runners correct.
- A checkpoint (C2SP signed note) is signed after a batch, at most once per
  ``checkpoint_interval`` under load; its primary key is the tree size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.types import BigInteger, Integer

from app.config import Settings
from app.crypto import checkpoint, merkle
from app.models.tables import (
    AuditCheckpoint,
    AuditEvent,
    AuditLeaf,
    AuditNode,
    AuditPending,
    AuditTreeState,
)
from app.models.types import utcnow
from app.services.leader import LeaderRunner
from app.services.server_keys import ServerKeys

log = logging.getLogger("refgate.sequencer")
ADVISORY_LOCK_KEY = 0x7265_6667_6174_65  # "refgate"


@dataclass(frozen=True)
class TreeHead:
    size: int
    root: bytes


# One statement text whatever the number of nodes: PostgreSQL plans and caches it once.
_PG_NODES = text(
    "SELECT n.level, n.idx, n.hash FROM audit_node n "
    "JOIN unnest(:levels, :idxs) AS c(level, idx) ON n.level = c.level AND n.idx = c.idx"
).bindparams(
    bindparam("levels", type_=ARRAY(Integer)),
    bindparam("idxs", type_=ARRAY(BigInteger)),
)

# Takes the oldest committed pending events out of the queue and reads them, in one
# statement; the caller holds the tree-state row lock, so no other batch races it.
_PG_TAKE_PENDING = (
    "WITH taken AS ("
    " DELETE FROM audit_pending WHERE event_id IN"
    " (SELECT event_id FROM audit_pending ORDER BY event_id LIMIT $1)"
    " RETURNING event_id) "
    "SELECT t.event_id, e.canonical FROM taken t JOIN audit_event e ON e.id = t.event_id "
    "ORDER BY t.event_id"
)


def _is_postgres(session: AsyncSession) -> bool:
    bind = session.bind
    return bind is not None and bind.dialect.name == "postgresql"


async def load_nodes(
    session: AsyncSession, coords: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """Fetch perfect-subtree hashes in one statement."""
    if not coords:
        return {}
    if _is_postgres(session):
        rows = await session.execute(
            _PG_NODES,
            {"levels": [lv for lv, _ in coords], "idxs": [ix for _, ix in coords]},
        )
    else:
        rows = await session.execute(
            select(AuditNode.level, AuditNode.idx, AuditNode.hash).where(
                tuple_(AuditNode.level, AuditNode.idx).in_(list(coords))
            )
        )
    return {(lv, ix): h for lv, ix, h in rows}


async def tree_head(session: AsyncSession) -> TreeHead:
    row = (await session.execute(select(AuditTreeState.size, AuditTreeState.root))).one()
    return TreeHead(size=row[0], root=row[1])


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


async def integrate_batch(session: AsyncSession, batch_size: int) -> int:
    """Integrate up to ``batch_size`` pending events in the caller's transaction."""
    locked = (
        await session.execute(
            update(AuditTreeState)
            .where(AuditTreeState.id == 1)
            .values(updated_at=utcnow())
            .returning(AuditTreeState.size)
        )
    ).scalar_one()
    size = int(locked)
    postgres = _is_postgres(session)
    pending: Sequence[Any]
    if postgres:
        pg = await _driver_connection(session)
        pending = await pg.fetch(_PG_TAKE_PENDING, batch_size)
    else:
        pending = (
            await session.execute(
                select(AuditPending.event_id, AuditEvent.canonical)
                .join(AuditEvent, AuditEvent.id == AuditPending.event_id)
                .order_by(AuditPending.event_id)
                .limit(batch_size)
            )
        ).all()
    if not pending:
        return 0
    coords = merkle.frontier_coords(size)
    nodes = await load_nodes(session, coords)
    frontier = [nodes[c] for c in coords]
    leaf_hash = merkle.leaf_hash
    leaves = [leaf_hash(canonical.encode("utf-8")) for _, canonical in pending]
    new_nodes, new_frontier = merkle.append_leaves(size, frontier, leaves)
    if postgres:
        await copy_tree_rows(pg, size, [row[0] for row in pending], leaves, new_nodes)
    else:
        await session.execute(
            insert(AuditLeaf.__table__),
            [
                {"seq": size + i, "event_id": event_id, "leaf_hash": leaves[i]}
                for i, (event_id, _) in enumerate(pending)
            ],
        )
        await session.execute(
            insert(AuditNode.__table__),
            [{"level": lv, "idx": ix, "hash": h} for lv, ix, h in new_nodes],
        )
        await session.execute(
            delete(AuditPending).where(
                AuditPending.event_id.in_([event_id for event_id, _ in pending])
            )
        )
    await session.execute(
        update(AuditTreeState)
        .where(AuditTreeState.id == 1)
        .values(size=size + len(pending), root=merkle.root_from_frontier(new_frontier))
    )
    return len(pending)


async def sign_checkpoint(
    session: AsyncSession, settings: Settings, server_keys: ServerKeys
) -> AuditCheckpoint | None:
    """Sign the current tree head unless a checkpoint for its size exists."""
    head = await tree_head(session)
    if await session.get(AuditCheckpoint, head.size) is not None:
        return None
    note = checkpoint.sign_checkpoint(
        settings.audit.log_origin, head.size, head.root, server_keys.log_seed
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
    while True:
        async with maker() as session, session.begin():
            n = await integrate_batch(session, settings.audit.batch_size)
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
        self.sequenced_total = 0

    def idle_seconds(self) -> float:
        return self.settings.audit.poll_interval

    async def step(self) -> bool:
        audit = self.settings.audit
        async with self.maker() as session, session.begin():
            n = await integrate_batch(session, audit.batch_size)
        self.sequenced_total += n
        now = time.monotonic()
        if now - self.last_checkpoint_at >= audit.checkpoint_interval:
            async with self.maker() as session, session.begin():
                signed = await sign_checkpoint(session, self.settings, self.server_keys)
            if signed is not None:
                self.last_checkpoint_at = now
        return n == audit.batch_size
