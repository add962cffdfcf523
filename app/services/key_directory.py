"""Key transparency proofs: an agency's leaf in the directory a checkpoint commits to.

The directory committed by the checkpoint of size N is rebuilt from the
``directory_entry`` history (per agency, the newest entry below N), so the
proofs of every old checkpoint stay servable. A server that lies here gains
nothing: the client checks the leaf and its neighbours against the root in
the signed checkpoint (``app.crypto.keydir.verify_entry``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app import errors
from app.crypto import keydir
from app.crypto.encoding import b64_encode
from app.identity import Principal
from app.models.tables import Agency, AuditCheckpoint
from app.services import agencies, audit
from app.services.audit import Action
from app.services.audit_log import latest_checkpoint
from app.services.sequencer import directory_state


def _encoded(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "hashes": [b64_encode(h) for h in item["hashes"]]}


async def key_proof(
    db: AsyncSession, who: Principal, agency_id: str, tree_size: int | None
) -> dict[str, Any]:
    """``GET /v1/agencies/{id}/keys/proof``: 404 for an unknown agency or a size
    without a checkpoint; 409 with ``Retry-After`` while the agency's first key
    event is not under a checkpoint yet (503 before the first checkpoint)."""
    if tree_size is None:
        size = (await latest_checkpoint(db)).tree_size
    else:
        if await db.get(AuditCheckpoint, tree_size) is None:
            raise errors.NotFound(f"no checkpoint was signed at tree size {tree_size}")
        size = tree_size
    leaves = keydir.sorted_leaves(await directory_state(db, size))
    proof = keydir.prove(leaves, agency_id)
    if proof is None:
        if await db.get(Agency, agency_id) is None:
            raise errors.NotFound(agencies.no_such_agency(agency_id))
        raise errors.Conflict(
            f"agency {agency_id} is not in the key directory of the checkpoint of size "
            f"{size} yet; retry shortly",
            slug="not-yet-logged",
            headers={"Retry-After": "1"},
        )
    await audit.record(
        db, who.actor, Action.KEY_PROOF, "agency", agency_id, subject_agency=agency_id,
        detail={"tree_size": size},
    )
    return {
        "tree_size": size,
        **_encoded(proof),
        "neighbours": [_encoded(n) for n in proof["neighbours"]],
    }
