"""The sequencer gives every committed event exactly one position, contiguous from 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy.event
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.client.assertion import client_assertion, token_form
from app.config import AuditSettings, Settings
from app.crypto import checkpoint, keys, merkle
from app.crypto.canonical import canonical_json
from app.crypto.encoding import b64url_encode
from app.db import create_engine, raw_statement_listeners, sessionmaker
from app.models.tables import AuditCheckpoint, AuditEvent, AuditPending
from app.models.types import utcnow
from app.services import agencies, audit, sequencer
from app.services.audit import Action, Actor, PendingEvent

BATCH = 7
ACTOR = Actor(client_id="tester", agency_id=None, role="system")
postgres_only = pytest.mark.parametrize("backend", ["postgresql"])


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings with small batches, so that a few dozen events take several."""
    return settings.model_copy(update={"audit": AuditSettings(
        sequencer_enabled=False, checkpoint_interval=0, batch_size=BATCH, poll_interval=0.05
    )})


def _pending(i: int) -> PendingEvent:
    return PendingEvent(actor=ACTOR, action=Action.AGENCY_LIST, resource_type="agency",
                        resource_id=None, detail={"n": i})


async def _record(app: Any, n: int) -> None:
    async with app.state.sessionmaker() as db, db.begin():
        await audit.record_pending(db, *(_pending(i) for i in range(n)))


async def _run_once(app: Any) -> int:
    return await sequencer.run_once(
        app.state.sessionmaker, app.state.settings, app.state.server_keys
    )


async def _rows(app: Any, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    async with app.state.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]


async def _assert_sound(app: Any, *, all_sequenced: bool = True, vkey: str | None = None) -> int:
    """Positions 0..n-1, each event at most once; hashes, nodes, head and checkpoints agree."""
    leaves = await _rows(
        app,
        "SELECT l.seq, l.event_id, l.leaf_hash, e.canonical FROM audit_leaf l "
        "JOIN audit_event e ON e.id = l.event_id ORDER BY l.seq",
    )
    n = len(leaves)
    assert [r[0] for r in leaves] == list(range(n))
    assert len({r[1] for r in leaves}) == n
    assert (await _rows(app, "SELECT count(*) FROM audit_leaf"))[0][0] == n  # none orphaned
    hashes = [bytes(r[2]) for r in leaves]
    assert hashes == [merkle.leaf_hash(r[3].encode()) for r in leaves]
    pending = {r[0] for r in await _rows(app, "SELECT event_id FROM audit_pending")}
    assert not pending & {r[1] for r in leaves}
    events = {r[0] for r in await _rows(app, "SELECT id FROM audit_event")}
    assert events == pending | {r[1] for r in leaves}
    if all_sequenced:
        assert not pending
    nodes = {(lv, ix): bytes(h) for lv, ix, h in await _rows(
        app, "SELECT level, idx, hash FROM audit_node")}
    for (lv, ix), h in nodes.items():
        if lv == 0:
            assert h == hashes[ix]
        else:
            assert h == merkle.node_hash(nodes[(lv - 1, 2 * ix)], nodes[(lv - 1, 2 * ix + 1)])
    assert len(nodes) == sum(n >> lv for lv in range(max(n.bit_length(), 1)))
    size, root = (await _rows(app, "SELECT size, root FROM audit_tree_state"))[0]
    assert size == n
    assert bytes(root) == merkle.root_from_leaf_hashes(hashes)
    vkey = vkey or checkpoint.verifier_key(app.state.settings.audit.log_origin,
                                           app.state.server_keys.log_public)
    for cp_size, cp_root, note in await _rows(
        app, "SELECT tree_size, root, note FROM audit_checkpoint"
    ):
        opened = checkpoint.open_checkpoint(note, vkey)
        assert (opened.size, opened.root) == (cp_size, bytes(cp_root))
        assert opened.root == merkle.root_from_leaf_hashes(hashes[:cp_size])
    return n


async def test_positions_are_contiguous_across_many_batches(app: Any) -> None:
    total = 0
    for round_ in range(6):
        for _ in range(3):  # several transactions per round
            await _record(app, 5 + round_)
            total += 5 + round_
        if round_ % 2:
            async with app.state.sessionmaker() as db, db.begin():
                assert await sequencer.integrate_batch(db, BATCH) == BATCH
            await _assert_sound(app, all_sequenced=False)
        else:
            await _run_once(app)
            await _assert_sound(app)
    await _run_once(app)
    assert await _assert_sound(app) == total


async def test_a_crashed_batch_leaves_no_partial_leaves(app: Any) -> None:
    await _record(app, 3 * BATCH + 2)
    async with app.state.sessionmaker() as db, db.begin():
        assert await sequencer.integrate_batch(db, BATCH) == BATCH
    state = "SELECT (SELECT count(*) FROM audit_leaf), (SELECT count(*) FROM audit_node), " \
            "(SELECT count(*) FROM audit_pending), (SELECT size FROM audit_tree_state)"
    before = await _rows(app, state)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="crash"):
            await _integrate_then_crash(app)
        assert await _rows(app, state) == before
    assert await _run_once(app) == 2 * BATCH + 2
    assert await _assert_sound(app) == 3 * BATCH + 2


async def _integrate_then_crash(app: Any) -> None:
    """Every write of a batch is done; the process dies before the commit."""
    async with app.state.sessionmaker() as db, db.begin():
        assert await sequencer.integrate_batch(db, BATCH) == BATCH
        raise RuntimeError("crash before commit")


def _event_row(i: int, row_id: int) -> dict[str, Any]:
    ts = utcnow()
    event_id = str(uuid.uuid4())
    event = audit.build_event(_pending(i), ts=ts, event_id=event_id)
    return {"id": row_id, "event_id": event_id, "ts": ts,
            "canonical": canonical_json(event).decode()}


async def _insert_with_id(db: AsyncSession, i: int, row_id: int) -> None:
    await db.execute(insert(AuditEvent), [_event_row(i, row_id)])
    await db.execute(insert(AuditPending), [{"event_id": row_id}])


async def _seq_of(app: Any, row_id: int) -> list[int]:
    return [r[0] for r in await _rows(app, "SELECT seq FROM audit_leaf WHERE event_id = :i",
                                      i=row_id)]


async def test_an_event_committed_after_a_higher_id_is_sequenced_once(
    app: Any, backend: str
) -> None:
    await _record(app, 3)
    await _run_once(app)
    maker = app.state.sessionmaker
    if backend == "postgresql":
        # Two real transactions: A takes the lower id but commits after B was sequenced.
        async with maker() as a, maker() as b:
            await a.begin()
            await audit.record_pending(a, _pending(1))
            await a.flush()
            id_a = (await a.execute(select(AuditPending.event_id))).scalars().all()[-1]
            async with b.begin():
                await audit.record_pending(b, _pending(2))
            id_b = (await _rows(app, "SELECT max(id) FROM audit_event"))[0][0]
            assert id_a < id_b
            await _run_once(app)
            assert await _seq_of(app, id_b) == [3]
            await a.commit()
    else:
        # SQLite serializes writers, so ids follow commit order; reproduce the same
        # state with explicit ids: B (higher) first, then A (lower) after B has a position.
        top = (await _rows(app, "SELECT max(id) FROM audit_event"))[0][0]
        id_a, id_b = top + 1, top + 10
        async with maker() as db, db.begin():
            await _insert_with_id(db, 2, id_b)
        await _run_once(app)
        assert await _seq_of(app, id_b) == [3]
        async with maker() as db, db.begin():
            await _insert_with_id(db, 1, id_a)
    await _run_once(app)
    assert await _seq_of(app, id_a) == [4]
    assert await _seq_of(app, id_b) == [3]
    assert await _run_once(app) == 0
    assert await _assert_sound(app) == 5


@postgres_only
async def test_two_signers_at_once_sign_one_checkpoint(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's runner and a run_once (shutdown, CLI) signing the same head: one
    checkpoint, and no failed insert (both used to find none and insert)."""
    await _record(app, 3)
    async with app.state.sessionmaker() as db, db.begin():
        await sequencer.integrate_batch(db, BATCH, sweep=False)
    # each signer, having read the head, waits (up to 0.5 s) for the other to read it too
    read_head, arrived, both = sequencer.tree_head, [], asyncio.Event()

    async def head_then_wait(session: AsyncSession) -> sequencer.TreeHead:
        head = await read_head(session)
        arrived.append(head.size)
        if len(arrived) == 2:
            both.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(both.wait(), 0.5)
        return head

    monkeypatch.setattr(sequencer, "tree_head", head_then_wait)

    async def sign() -> AuditCheckpoint | None:
        async with app.state.sessionmaker() as db, db.begin():
            return await sequencer.sign_checkpoint(db, app.state.settings, app.state.server_keys)

    signed = await asyncio.gather(sign(), sign())
    assert sum(cp is not None for cp in signed) == 1
    assert await _rows(
        app, "SELECT count(*) FROM audit_checkpoint "
        "WHERE tree_size = (SELECT size FROM audit_tree_state)",
    ) == [(1,)]
    await _assert_sound(app)


async def test_one_root_per_tree_size(app: Any) -> None:
    await _record(app, 4)
    await _run_once(app)
    async with app.state.sessionmaker() as db, db.begin():
        again = await sequencer.sign_checkpoint(db, app.state.settings, app.state.server_keys)
        assert again is None  # the size is already signed
        head = await sequencer.tree_head(db)
    forged = checkpoint.sign_checkpoint(
        app.state.settings.audit.log_origin, head.size, merkle.EMPTY_ROOT,
        app.state.server_keys.log_seed,
    )
    with pytest.raises(IntegrityError):
        await _insert_checkpoint(app, head.size, forged)
    rows = await _rows(app, "SELECT root FROM audit_checkpoint WHERE tree_size = :s", s=head.size)
    assert [bytes(r[0]) for r in rows] == [head.root]


async def _insert_checkpoint(app: Any, size: int, note: str) -> None:
    async with app.state.sessionmaker() as db, db.begin():
        db.add(AuditCheckpoint(tree_size=size, root=merkle.EMPTY_ROOT, note=note))


async def _wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _advisory_locks(app: Any) -> int:
    rows = await _rows(
        app,
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.objid = :low AND d.datname = current_database()",
        low=sequencer.ADVISORY_LOCK_KEY & 0xFFFFFFFF,
    )
    return int(rows[0][0])


async def _all_sequenced(app: Any) -> bool:
    rows = await _rows(app, "SELECT (SELECT count(*) FROM audit_pending), (SELECT count(*) "
                            "FROM audit_event), (SELECT size FROM audit_tree_state)")
    pending, events, size = rows[0]
    return bool(pending == 0 and size == events)


@postgres_only
async def test_two_runners_one_leader_gap_free_and_failover(app: Any, settings: Settings) -> None:
    engines = [create_engine(settings), create_engine(settings)]
    runners = [
        sequencer.SequencerRunner(e, sessionmaker(e), settings, app.state.server_keys)
        for e in engines
    ]
    try:
        for r in runners:
            r.start()

        async def one_leader() -> bool:
            return sum(r.is_leader for r in runners) == 1

        await _wait_for(one_leader, 5, "a leader")
        total = 0
        for i in range(12):
            await _record(app, 3 + i % 5)
            total += 3 + i % 5
            await asyncio.sleep(0.01)
        await _wait_for(lambda: _all_sequenced(app), 10, "the runners to sequence everything")
        assert sum(r.is_leader for r in runners) == 1
        assert await _advisory_locks(app) == 1
        assert await _assert_sound(app) == total

        # The leader dies: the other takes over and carries on from the same tree.
        leader = next(r for r in runners if r.is_leader)
        other = next(r for r in runners if r is not leader)
        await leader.stop()
        await _record(app, 20)
        total += 20
        await _wait_for(lambda: _all_sequenced(app), 10, "the second runner to take over")
        assert other.is_leader
        assert await _assert_sound(app) == total
    finally:
        for r in runners:
            await r.stop()
        for e in engines:
            await e.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _register(app: Any) -> tuple[dict[str, str], dict[str, keys.SigningKeys]]:
    """An agency with a caseworker and an auditor client; returns client ids and auth keys."""
    agency_keys = keys.generate_agency_keys()
    auth = {role: keys.generate_signing_key() for role in ("caseworker", "auditor")}
    async with app.state.sessionmaker() as db, db.begin():
        agency = await agencies.create(
            db, ACTOR, name="Live office", kind="government",
            enc_key=b64url_encode(agency_keys.enc_public),
            sign_key=b64url_encode(agency_keys.sig_public),
        )
        ids = {
            role: (await agencies.create_client(
                db, ACTOR, agency.id, role=role, auth_key=b64url_encode(a.public)
            )).client_id
            for role, a in auth.items()
        }
    return ids, auth


@pytest.mark.slow
@postgres_only
async def test_live_server_with_two_workers_logs_every_event_once(
    app: Any, database_url: str, tmp_path: Path
) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "REFGATE_ENV": "test",
        "REFGATE_DATABASE_URL": database_url,
        "REFGATE_DATA_DIR": str(tmp_path / "live"),
        "REFGATE_AUDIT__CHECKPOINT_INTERVAL": "0.2",
        "REFGATE_AUDIT__POLL_INTERVAL": "0.05",
        # This is a load test of the sequencer, not of the per-client request limits.
        "REFGATE_RATELIMIT__ENABLED": "false",
    }
    log = (tmp_path / "server.log").open("wb")
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.server_cli", "serve", "--port", str(port), "--workers", "2",
        env=env, stdout=log, stderr=log, start_new_session=True,
    )
    try:
        clients, auth = await _register(app)  # while the workers start
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:

            async def ready() -> bool:
                try:
                    return (await http.get("/health/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await _wait_for(ready, 30, "the server to be ready")

            async def token(role: str) -> dict[str, str]:
                r = await http.post("/oauth/token", data=token_form(client_assertion(
                    clients[role], auth[role].seed, f"{base}/oauth/token")))
                assert r.status_code == 200, r.text
                return {"Authorization": f"Bearer {r.json()['access_token']}"}

            async def directory(headers: dict[str, str]) -> None:
                r = await http.get("/v1/agencies", params={"limit": 1}, headers=headers)
                assert r.status_code == 200, r.text

            # A few hundred events across both workers: token issuances and directory reads.
            tokens = await asyncio.gather(*(token("caseworker") for _ in range(10)))
            for start in range(0, 240, 40):
                await asyncio.gather(*(directory(tokens[i % 10]) for i in range(start, start + 40)))
            events = (await _rows(app, "SELECT count(*) FROM audit_event"))[0][0]
            assert events >= 250
            auditor = await token("auditor")
            vkey = (await http.get("/v1/audit/log-key", headers=auditor)).text.strip()

            async def covered() -> bool:
                r = await http.get("/v1/audit/checkpoint", headers=auditor)
                if r.status_code != 200:
                    return False
                return checkpoint.open_checkpoint(r.text, vkey).size >= events

            await _wait_for(covered, 15, "a checkpoint covering every event")
        assert await _advisory_locks(app) == 1  # one sequencer among the two workers
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 15)
            except TimeoutError:
                os.killpg(server.pid, 9)
                await server.wait()
        log.close()
    # Checked once the server is down, on a log that no longer moves.
    await _assert_sound(app, all_sequenced=False, vkey=vkey)
    in_log = await _rows(app, "SELECT count(*) FROM audit_leaf l JOIN audit_event e "
                              "ON e.id = l.event_id WHERE l.seq < :n", n=events)
    assert in_log[0][0] == events


async def test_upper_tree_nodes_are_served_from_memory_and_proofs_still_verify(
    app: Any,
) -> None:
    """Perfect-subtree hashes from ``CACHED_LEVEL`` up are kept by the worker after the
    first read; proofs built from them verify against the root, as before."""
    await _record(app, 700)
    async with app.state.sessionmaker() as db, db.begin():
        assert await sequencer.integrate_batch(db, 1000) == 700
    size, root = (await _rows(app, "SELECT size, root FROM audit_tree_state"))[0]
    leaves = [bytes(r[0]) for r in await _rows(
        app, "SELECT leaf_hash FROM audit_leaf ORDER BY seq")]
    requested: list[int] = []  # node coordinates asked of the database, per statement

    def count(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if "audit_node" in statement:
            lists = [p for p in params if isinstance(p, list)]  # PostgreSQL: two arrays
            requested.append(len(lists[0]) if lists else len(params) // 2)

    rounds = []
    sqlalchemy.event.listen(app.state.engine.sync_engine, "before_cursor_execute", count)
    # on PostgreSQL the nodes are read on asyncpg directly (app.db.Prepared)
    raw_statement_listeners.append(raw := lambda conn, sql, args: count(conn, None, sql, args))
    try:
        for _ in range(2):  # the second round asks only for the levels below CACHED_LEVEL
            requested.clear()
            for seq in (0, 255, 256, 511, 699):
                async with app.state.sessionmaker() as db:
                    coords = merkle.inclusion_proof_coords(seq, size)
                    nodes = await sequencer.load_nodes(db, coords)
                assert set(nodes) == set(coords)
                proof = merkle.inclusion_proof(seq, size, nodes)
                assert merkle.verify_inclusion(leaves[seq], seq, size, proof, bytes(root))
            rounds.append(sum(requested))
    finally:
        raw_statement_listeners.remove(raw)
        sqlalchemy.event.remove(app.state.engine.sync_engine, "before_cursor_execute", count)
    levels = [lv for seq in (0, 255, 256, 511, 699)
              for lv, _ in merkle.inclusion_proof_coords(seq, size)]
    upper = sum(lv >= sequencer.CACHED_LEVEL for lv in levels)
    assert upper > 0
    assert rounds[0] <= len(levels)  # the first round already reuses what it read
    assert rounds[1] == len(levels) - upper, rounds  # the second asks for no upper node
    cached = [k for k in sequencer._node_cache if k[1] >= sequencer.CACHED_LEVEL]
    assert cached, "no upper-level node was kept"
    assert all(lv >= sequencer.CACHED_LEVEL for _, lv, _ in sequencer._node_cache)
