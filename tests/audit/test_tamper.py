"""The offline verifier catches what a database superuser could do to the log.

Each test lets the gateway sequence and sign a real log, checks that
``verify_log`` accepts it, then bypasses the append-only triggers (dropping
them as the owner of the tables could), rewrites the log, reinstalls the
triggers and checks that the verifier fails and names the position.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.client.audit_verify import VerifyReport, verify_log
from app.crypto import checkpoint, merkle
from app.crypto.canonical import canonical_json
from app.services import sequencer
from migrations import append_only
from tests.taskforce import TaskForce


@pytest.fixture
async def auditor(app: Any, tf: TaskForce) -> AsyncIterator[httpx.AsyncClient]:
    headers = await tf.headers("office", "auditor")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers=headers
    ) as c:
        yield c


async def _busy_log(client: httpx.AsyncClient, tf: TaskForce) -> int:
    """Referrals, reads and a denied read on top of the seeded directory; then sequence."""
    for i in range(3):
        body = tf.seal(
            "shelter", {"full_name": f"Person {i}"}, {"full_name": {"legal": "service_provision"}}
        )
        r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
        assert r.status_code == 201, r.text
        path = f"/v1/referrals/{body['manifest']['referral_id']}"
        assert (await client.get(path, headers=await tf.headers("legal"))).status_code == 200
        assert (await client.get(path, headers=await tf.headers("ngo"))).status_code == 404
    await tf.sequence()
    return await _tree_size(tf)


async def _tree_size(tf: TaskForce) -> int:
    async with tf.app.state.engine.connect() as conn:
        found = await conn.execute(text("SELECT max(tree_size) FROM audit_checkpoint"))
        return int(found.scalar_one())


async def _verify(http: httpx.AsyncClient, state: Path, **kw: Any) -> tuple[VerifyReport, str]:
    out = io.StringIO()
    report = await verify_log(http, state_file=state, out=out, **kw)
    return report, out.getvalue()


async def _tamper(app: Any, *edits: tuple[str, dict[str, Any]]) -> None:
    """Run ``edits`` with the append-only triggers dropped, then put the triggers back."""
    engine = app.state.engine
    dialect = engine.dialect.name
    async with engine.begin() as conn:
        for stmt in append_only.drop(dialect):
            await conn.execute(text(stmt))
        for stmt, params in edits:
            await conn.execute(text(stmt), params)
        for stmt in append_only.install(dialect):
            await conn.execute(text(stmt))


async def _event_at(conn: AsyncConnection, seq: int) -> tuple[int, str]:
    row = (
        await conn.execute(
            text("SELECT e.id, e.canonical FROM audit_leaf l "
                 "JOIN audit_event e ON e.id = l.event_id WHERE l.seq = :s"),
            {"s": seq},
        )
    ).one()
    return int(row[0]), str(row[1])


def _rewritten(canonical: str) -> str:
    event = json.loads(canonical)
    event["outcome"] = "denied" if event["outcome"] == "ok" else "ok"
    return canonical_json(event).decode()


async def test_untouched_log_verifies_and_pins_key_and_checkpoint(
    client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient, tmp_path: Path
) -> None:
    size = await _busy_log(client, tf)
    state = tmp_path / "state.json"
    report, out = await _verify(auditor, state, full=True)
    assert report.ok, out
    assert report.key_trusted_on_first_use
    assert "WARNING" in out
    assert "trusting the server's key on first use" in out
    assert report.tree_size == size
    assert report.events_checked >= size
    assert f"tree size {size}" in out
    saved = json.loads(state.read_text())
    log_key = (await auditor.get("/v1/audit/log-key")).text.strip()
    assert saved["log_key"] == log_key
    assert checkpoint.open_checkpoint(saved["checkpoint"], log_key).size == size

    # A second run uses the pinned key, and checks the newer checkpoint extends the saved one.
    assert (await client.get("/v1/agencies", headers=await tf.headers("legal"))).status_code == 200
    await tf.sequence()
    report, out = await _verify(auditor, state, full=True)
    assert report.ok, out
    assert not report.key_trusted_on_first_use
    assert report.tree_size is not None
    assert report.tree_size > size
    assert f"extends the checkpoint saved in {state} (size {size})" in out


async def test_wrong_log_key_fails_the_signature(
    client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient, tmp_path: Path
) -> None:
    await _busy_log(client, tf)
    other = checkpoint.verifier_key(tf.app.state.settings.audit.log_origin, bytes(range(32)))
    report, out = await _verify(auditor, tmp_path / "s.json", full=True, log_key=other)
    assert not report.ok
    assert "FAIL: checkpoint signature" in out
    assert not (tmp_path / "s.json").exists()


async def test_edited_event_is_named(
    client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient, tmp_path: Path
) -> None:
    size = await _busy_log(client, tf)
    state = tmp_path / "state.json"
    assert (await _verify(auditor, state, full=True))[0].ok
    before = state.read_text()
    seq = size // 2
    async with tf.app.state.engine.connect() as conn:
        event_id, canonical = await _event_at(conn, seq)
    await _tamper(tf.app, ("UPDATE audit_event SET canonical = :c WHERE id = :i",
                           {"c": _rewritten(canonical), "i": event_id}))
    report, out = await _verify(auditor, state, full=True)
    assert not report.ok
    assert report.failures[0].startswith("FAIL: ")
    assert report.failures[0].endswith(f"at seq {seq}")
    assert state.read_text() == before  # a failed run never moves the baseline
    # Without --full, the checkpoint chain alone is intact.
    assert (await _verify(auditor, state, full=False))[0].ok


async def test_deleted_tail_names_first_missing_seq(
    client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient, tmp_path: Path
) -> None:
    size = await _busy_log(client, tf)
    state = tmp_path / "state.json"
    assert (await _verify(auditor, state, full=True))[0].ok
    k = 3
    await _tamper(
        tf.app,
        ("DELETE FROM audit_event WHERE id IN (SELECT event_id FROM audit_leaf WHERE seq >= :s)",
         {"s": size - k}),
        ("DELETE FROM audit_leaf WHERE seq >= :s", {"s": size - k}),
    )
    report, out = await _verify(auditor, state, full=True)
    assert not report.ok
    missing = [f for f in report.failures if "missing events" in f]
    assert missing, out
    assert missing[0].endswith(f"at seq {size - k}")


async def test_deleted_middle_row_is_a_gap(
    client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient, tmp_path: Path
) -> None:
    size = await _busy_log(client, tf)
    seq = size // 3
    await _tamper(tf.app, ("DELETE FROM audit_leaf WHERE seq = :s", {"s": seq}))
    report, out = await _verify(auditor, tmp_path / "s.json", full=True)
    assert not report.ok
    assert report.failures[0].endswith(f"at seq {seq}"), out
    assert "gap" in report.failures[0]


@pytest.mark.parametrize("how", ["canonical", "event_id"])
async def test_swapped_rows_name_the_smaller_seq(
    client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient, tmp_path: Path,
    how: str,
) -> None:
    size = await _busy_log(client, tf)
    i, j = 4, size - 2
    async with tf.app.state.engine.connect() as conn:
        id_i, c_i = await _event_at(conn, i)
        id_j, c_j = await _event_at(conn, j)
    if how == "canonical":
        edits = [
            ("UPDATE audit_event SET canonical = :c WHERE id = :i", {"c": c_j, "i": id_i}),
            ("UPDATE audit_event SET canonical = :c WHERE id = :i", {"c": c_i, "i": id_j}),
        ]
    else:  # through a free value: event_id is unique
        edits = [
            ("UPDATE audit_leaf SET event_id = -1 WHERE seq = :s", {"s": i}),
            ("UPDATE audit_leaf SET event_id = :e WHERE seq = :s", {"e": id_i, "s": j}),
            ("UPDATE audit_leaf SET event_id = :e WHERE seq = :s", {"e": id_j, "s": i}),
        ]
    await _tamper(tf.app, *edits)
    report, out = await _verify(auditor, tmp_path / "s.json", full=True)
    assert not report.ok
    assert report.failures[0].endswith(f"at seq {i}"), out


async def test_rolled_back_checkpoint_is_refused(
    client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient, tmp_path: Path
) -> None:
    old_size = await _busy_log(client, tf)
    old_state = tmp_path / "old.json"
    assert (await _verify(auditor, old_state))[0].ok
    await _busy_log(client, tf)
    state = tmp_path / "state.json"
    report, out = await _verify(auditor, state, full=True)
    assert report.ok, out
    newer = json.loads(state.read_text())["checkpoint"]
    newer_file = tmp_path / "newer.note"
    newer_file.write_text(newer)
    new_size = report.tree_size
    assert new_size is not None
    assert new_size > old_size

    # The server forgets the newer checkpoints (and would serve the old tree head).
    await _tamper(tf.app, ("DELETE FROM audit_checkpoint WHERE tree_size > :s", {"s": old_size}))
    report, out = await _verify(auditor, state)
    assert not report.ok
    assert "rollback" in report.failures[0]
    assert report.failures[0].endswith(f"at seq {old_size}")
    assert json.loads(state.read_text())["checkpoint"] == newer

    # The same with a saved note instead of a state file: a fresh verifier is not fooled either.
    report, out = await _verify(auditor, tmp_path / "fresh.json", checkpoint_file=newer_file)
    assert not report.ok
    assert "rollback" in out
    # The old verifier still finds the served checkpoint consistent with what it saw.
    assert (await _verify(auditor, old_state))[0].ok


async def test_checkpoint_signed_over_a_rewritten_tree_fails_consistency(
    client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient, tmp_path: Path
) -> None:
    size = await _busy_log(client, tf)
    state = tmp_path / "state.json"
    assert (await _verify(auditor, state))[0].ok
    app = tf.app
    # More events are integrated; a compromised signer publishes a different root for them.
    assert (await client.get("/v1/agencies", headers=await tf.headers("legal"))).status_code == 200
    async with app.state.sessionmaker() as db, db.begin():
        await sequencer.integrate_batch(db, 1000)
        head = await sequencer.tree_head(db)
    forged_root = merkle.node_hash(head.root, head.root)
    note = checkpoint.sign_checkpoint(
        app.state.settings.audit.log_origin, head.size, forged_root, app.state.server_keys.log_seed
    )
    async with app.state.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO audit_checkpoint (tree_size, root, note, created_at) "
                 "VALUES (:s, :r, :n, CURRENT_TIMESTAMP)"),
            {"s": head.size, "r": forged_root, "n": note},
        )
    report, out = await _verify(auditor, state)
    assert not report.ok
    assert report.failures[0].startswith("FAIL: consistency"), out
    assert report.failures[0].endswith(f"at seq {size}")


async def test_fork_at_the_same_size_is_refused(
    client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient, tmp_path: Path
) -> None:
    size = await _busy_log(client, tf)
    state = tmp_path / "state.json"
    assert (await _verify(auditor, state))[0].ok
    app = tf.app
    forged = checkpoint.sign_checkpoint(
        app.state.settings.audit.log_origin, size, merkle.EMPTY_ROOT, app.state.server_keys.log_seed
    )
    await _tamper(app, ("UPDATE audit_checkpoint SET note = :n WHERE tree_size = :s",
                        {"n": forged, "s": size}))
    report, out = await _verify(auditor, state)
    assert not report.ok
    assert report.failures[0].startswith("FAIL: fork"), out


async def test_event_and_leaf_hash_rewritten_together_is_found_by_bisection(
    client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient, tmp_path: Path
) -> None:
    size = await _busy_log(client, tf)
    state = tmp_path / "state.json"
    assert (await _verify(auditor, state, full=True))[0].ok
    for seq in (size - 1, 0, size // 2 + 1):
        async with tf.app.state.engine.connect() as conn:
            event_id, canonical = await _event_at(conn, seq)
        forged = _rewritten(canonical)
        await _tamper(
            tf.app,
            ("UPDATE audit_event SET canonical = :c WHERE id = :i", {"c": forged, "i": event_id}),
            ("UPDATE audit_leaf SET leaf_hash = :h WHERE seq = :s",
             {"h": merkle.leaf_hash(forged.encode()), "s": seq}),
        )
        report, out = await _verify(auditor, state, full=True)
        assert not report.ok
        assert len(report.failures) == 1, out
        assert "both rewritten" in report.failures[0]
        assert report.failures[0].endswith(f"at seq {seq}"), out
        await _tamper(  # restore, so the next round has exactly one rewritten event
            tf.app,
            ("UPDATE audit_event SET canonical = :c WHERE id = :i",
             {"c": canonical, "i": event_id}),
            ("UPDATE audit_leaf SET leaf_hash = :h WHERE seq = :s",
             {"h": merkle.leaf_hash(canonical.encode()), "s": seq}),
        )
    assert (await _verify(auditor, state, full=True))[0].ok
