"""Hardening tests: authorization matrix, fuzzing, hostile inputs, rate limits, faults, logs.

Shared helpers live here: settings without rate limits or background runners
(so a test counts exactly the requests it makes), a problem+json assertion, and
an independent check of the whole audit log (root recomputed from the events).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import AuditSettings, RateLimitSettings, Settings, WebhookSettings
from app.crypto import merkle

PROBLEM_JSON = "application/problem+json"


def quiet_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Test settings: no rate limits, sequencer and webhook dispatcher off (run them by hand)."""
    values: dict[str, Any] = {
        "env": "test",
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "audit": AuditSettings(sequencer_enabled=False, checkpoint_interval=0),
        "webhooks": WebhookSettings(dispatcher_enabled=False, allow_private_targets=True),
        "ratelimit": RateLimitSettings(enabled=False),
    }
    values.update(overrides)
    return Settings(**values)


def assert_problem(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """A 4xx problem+json answer with one of ``statuses`` (any 4xx when none given)."""
    if statuses:
        assert response.status_code in statuses, (response.status_code, response.text[:500])
    else:
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    content_type = response.headers.get("content-type", "")
    assert content_type.split(";")[0] == PROBLEM_JSON, (content_type, response.text[:300])
    body = response.json()
    assert isinstance(body, dict), body
    assert body["status"] == response.status_code, body
    assert isinstance(body.get("type"), str), body
    assert isinstance(body.get("title"), str), body
    return body


async def verify_audit_log(engine: AsyncEngine) -> dict[str, int]:
    """Check the whole log independently of the server's own verifier.

    - positions 0..n-1 are contiguous, each names a distinct event, nothing is pending;
    - every leaf hash is SHA-256(0x00 || the event's stored canonical bytes);
    - the root recomputed from those leaves equals ``audit_tree_state.root``, and
      every signed checkpoint's root equals the root of its prefix of the log.

    Returns counts: events, leaves, checkpoints.
    """
    async with engine.connect() as conn:
        events = (await conn.execute(text("SELECT count(*) FROM audit_event"))).scalar_one()
        pending = (await conn.execute(text("SELECT count(*) FROM audit_pending"))).scalar_one()
        rows = (
            await conn.execute(
                text(
                    "SELECT l.seq, l.leaf_hash, e.canonical FROM audit_leaf l "
                    "JOIN audit_event e ON e.id = l.event_id ORDER BY l.seq"
                )
            )
        ).all()
        size, root = (await conn.execute(text("SELECT size, root FROM audit_tree_state"))).one()
        checkpoints = (
            await conn.execute(text("SELECT tree_size, root FROM audit_checkpoint"))
        ).all()
    assert pending == 0, f"{pending} events were never sequenced"
    assert [r[0] for r in rows] == list(range(len(rows))), "log positions are not contiguous"
    assert len(rows) == events, f"{events} events but {len(rows)} leaves"
    leaves = []
    for seq, stored, canonical in rows:
        leaf = hashlib.sha256(b"\x00" + canonical.encode("utf-8")).digest()
        assert leaf == bytes(stored), f"leaf {seq} does not hash its event"
        assert leaf == merkle.leaf_hash(canonical.encode("utf-8"))
        json.loads(canonical)
        leaves.append(leaf)
    assert size == len(leaves)
    assert merkle.root_from_leaf_hashes(leaves) == bytes(root), "tree root does not match"
    for tree_size, cp_root in checkpoints:
        assert merkle.root_from_leaf_hashes(leaves[:tree_size]) == bytes(cp_root), tree_size
    return {"events": events, "leaves": len(leaves), "checkpoints": len(checkpoints)}


async def count_rows(engine: AsyncEngine, *tables: str) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            t: (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()  # noqa: S608 (fixed table names)
            for t in tables
        }
