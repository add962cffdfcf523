"""``refgate audit report <referral>``: who touched a referral, each event proven in the log.

A sending agency's caseworker lists every event about one of its referrals
(reads, denied attempts, grants, revocations, statuses, withdraw): the server
answers them because each names the sender as ``subject_agency`` (or the
caller's agency acted). Each event is checked against the pinned checkpoint:
its leaf hash is recomputed from its RFC 8785 bytes and its inclusion proof
verified against the checkpoint's root. An event the server serves but cannot
prove is reported as ``NOT PROVEN`` and makes the command fail; an event newer
than the checkpoint is ``pending`` (not yet in a signed tree).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

from app.crypto import merkle
from app.crypto.canonical import CanonicalizationError, canonical_json
from app.crypto.checkpoint import Checkpoint
from app.crypto.encoding import EncodingError, b64_decode

__all__ = ["COLUMNS", "access_report", "render"]

COLUMNS = ("seq", "ts", "action", "outcome", "actor_agency", "actor", "role", "purpose",
           "grant", "proof")


class _Client(Protocol):
    async def check_log(self) -> Checkpoint: ...
    async def audit_events(
        self, *, resource_id: str | None = ..., limit: int = ..., cursor: str | None = ...
    ) -> Any: ...
    async def inclusion_proof(self, seq: int, tree_size: int | None = None) -> dict[str, Any]: ...


async def _proven(client: _Client, cp: Checkpoint, seq: int | None, event: Any) -> str:
    if not isinstance(seq, int) or isinstance(seq, bool):
        return "pending"
    if seq >= cp.size:
        return "pending"
    try:
        leaf = merkle.leaf_hash(canonical_json(event))
        proof = await client.inclusion_proof(seq, cp.size)
        hashes = [b64_decode(h, length=merkle.HASH_SIZE) for h in proof["hashes"]]
    except (CanonicalizationError, EncodingError, KeyError, TypeError):
        return "NOT PROVEN"
    ok = merkle.verify_inclusion(leaf, seq, cp.size, hashes, cp.root)
    return "ok" if ok else "NOT PROVEN"


async def access_report(
    client: _Client, referral_id: str
) -> tuple[Checkpoint, list[dict[str, Any]]]:
    """Every event about ``referral_id`` visible to the caller, oldest first, each with
    ``proof``: ``ok`` (included in the pinned checkpoint), ``pending`` or ``NOT PROVEN``."""
    cp = await client.check_log()
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await client.audit_events(resource_id=referral_id, limit=500, cursor=cursor)
        for item in page.items:
            event = item.get("event") or {}
            rows.append({
                "seq": item.get("seq"),
                **{k: event.get(k) for k in COLUMNS if k not in ("seq", "proof")},
                "proof": await _proven(client, cp, item.get("seq"), event),
                "event": event,
            })
        cursor = page.next_cursor
        if not cursor:
            break
    rows.reverse()
    return cp, rows


def render(out: TextIO, rows: Sequence[dict[str, Any]], fmt: str, cp: Checkpoint) -> None:
    """Write the report as ``table``, ``json`` or ``csv``."""
    if fmt == "json":
        json.dump({"checkpoint": {"tree_size": cp.size}, "events": list(rows)}, out, indent=2)
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([_cell(r[c]) for c in COLUMNS])
        return
    widths = [max([len(c), *(len(_cell(r[c])) for r in rows)]) for c in COLUMNS]
    out.write("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(_cell(r[c]).ljust(w) for c, w in zip(COLUMNS, widths, strict=True))
                  .rstrip() + "\n")
    out.write(f"{len(rows)} events; proofs against the pinned checkpoint of size {cp.size}\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)
