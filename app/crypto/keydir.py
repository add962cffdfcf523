"""The key directory tree: every agency's current keys, committed by every checkpoint.

Leaves are, sorted by agency id, the RFC 8785 bytes of ::

    {"agency": <id>, "status": "active" | "suspended",
     "enc_kid": <kid> | null, "sig_kid": <kid> | null, "event": <seq>}

where ``event`` is the log position of the event that set this state. The
tree is RFC 6962 with the audit log's hashing (``app.crypto.merkle``), and a
checkpoint commits to it with the extension line ``directory <n> <root>``.

The directory is a pure function of the log: ``apply_event`` folds the key
events (``agency:create``, ``key:register``, ``key:rotate``,
``agency:suspend`` for both suspension and reactivation) in log order, so
the directory committed by the checkpoint of size N is the fold of the
first N events. The sequencer and ``refgate audit verify --full`` run the
same fold; a server that keeps a different directory than its log says
signs a root that the verifier recomputes differently.

``verify_entry`` is what a client runs before it encrypts to an agency or
trusts its signature: the leaf, its inclusion proof and its neighbours'
prove that the signed directory holds exactly one leaf for the agency.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.crypto import merkle
from app.crypto.canonical import canonical_json
from app.vocab import AgencyStatus, AuditAction, AuditOutcome, KeyUse

__all__ = [
    "KEY_ACTIONS",
    "DirectoryError",
    "DirectoryProof",
    "apply_event",
    "inclusion_proof",
    "leaf_bytes",
    "prove",
    "root_of",
    "verify_entry",
]

KEY_ACTIONS = frozenset({
    AuditAction.AGENCY_CREATE, AuditAction.KEY_REGISTER, AuditAction.KEY_ROTATE,
    AuditAction.AGENCY_SUSPEND,
})
"""Audit actions that change the directory (when their outcome is ``ok``)."""

STATUSES = frozenset(AgencyStatus)
_LEAF_MEMBERS = frozenset({"agency", "status", "enc_kid", "sig_kid", "event"})


class DirectoryError(ValueError):
    """A directory leaf or proof is malformed or does not verify."""


def leaf_bytes(leaf: Mapping[str, Any]) -> bytes:
    """The RFC 8785 bytes of a leaf object (what its leaf hash is computed over)."""
    return canonical_json(dict(leaf))


def _leaf_hash(leaf: Mapping[str, Any]) -> bytes:
    return merkle.leaf_hash(leaf_bytes(leaf))


def apply_event(state: dict[str, dict[str, Any]], seq: int, event: Mapping[str, Any]) -> str | None:
    """Fold one log event (at log position ``seq``) into ``state`` ({agency: leaf}).

    Returns the agency whose leaf changed, or ``None`` when the event is not a
    successful key event. A key event for an agency not created before starts
    its leaf as ``active`` (a log that begins after the agency's creation).
    """
    action = event.get("action")
    if action not in KEY_ACTIONS or event.get("outcome") != AuditOutcome.OK:
        return None
    detail = event.get("detail")
    detail = detail if isinstance(detail, Mapping) else {}
    if action == "agency:create":
        agency = event.get("resource_id")
    elif action == "agency:suspend":
        agency = event.get("resource_id")
    else:
        agency = detail.get("agency")
    if not isinstance(agency, str):
        return None
    leaf = dict(
        state.get(agency)
        or {"agency": agency, "status": AgencyStatus.ACTIVE.value, "enc_kid": None, "sig_kid": None}
    )
    if action == "agency:create":
        leaf.update(status=AgencyStatus.ACTIVE.value, enc_kid=None, sig_kid=None)
    elif action == "agency:suspend":
        to = detail.get("to")
        if to not in STATUSES:
            return None
        leaf["status"] = to
    else:
        use, kid = detail.get("use"), detail.get("kid")
        if use not in set(KeyUse) or not isinstance(kid, str):
            return None
        leaf[f"{use}_kid"] = kid
    leaf["event"] = seq
    state[agency] = leaf
    return agency


def sorted_leaves(state: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The leaves in tree order (by agency id)."""
    return [state[a] for a in sorted(state)]


def root_of(leaves: Sequence[Mapping[str, Any]]) -> tuple[int, bytes]:
    """(number of leaves, RFC 6962 root) of leaves already in tree order."""
    return len(leaves), merkle.root_from_leaf_hashes(_leaf_hash(leaf) for leaf in leaves)


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 9162 inclusion proof of leaf ``index`` among the leaf hashes ``hashes``."""
    size = len(hashes)
    nodes = {
        (level, idx): merkle.root_from_leaf_hashes(hashes[idx << level : (idx + 1) << level])
        for level, idx in merkle.inclusion_proof_coords(index, size)
    }
    return merkle.inclusion_proof(index, size, nodes)


def prove(leaves: Sequence[Mapping[str, Any]], agency: str) -> dict[str, Any] | None:
    """The proof members of ``GET /v1/agencies/{id}/keys/proof`` for ``agency``:
    ``directory_size``, ``index``, ``leaf``, ``hashes`` and ``neighbours`` (the
    leaves just before and after it, each with its own proof), hashes as raw
    bytes; ``None`` if the directory has no leaf for the agency."""
    index = next((i for i, leaf in enumerate(leaves) if leaf["agency"] == agency), None)
    if index is None:
        return None
    hashes = [_leaf_hash(leaf) for leaf in leaves]

    def one(i: int) -> dict[str, Any]:
        return {"index": i, "leaf": dict(leaves[i]), "hashes": inclusion_proof(hashes, i)}

    return {
        "directory_size": len(leaves),
        **one(index),
        "neighbours": [one(i) for i in (index - 1, index + 1) if 0 <= i < len(leaves)],
    }


@dataclass(frozen=True, slots=True)
class DirectoryProof:
    """A verified directory leaf: the agency's state as the signed directory states it."""

    agency: str
    status: str
    enc_kid: str | None
    sig_kid: str | None
    event: int


def _check_leaf(leaf: object, what: str) -> Mapping[str, Any]:
    if not isinstance(leaf, Mapping) or set(leaf) != _LEAF_MEMBERS:
        raise DirectoryError(f"{what} is not a directory leaf")
    if not isinstance(leaf["agency"], str) or leaf["status"] not in STATUSES:
        raise DirectoryError(f"{what} has a malformed agency or status")
    for use in ("enc_kid", "sig_kid"):
        if leaf[use] is not None and not isinstance(leaf[use], str):
            raise DirectoryError(f"{what} has a malformed {use}")
    event = leaf["event"]
    if not isinstance(event, int) or isinstance(event, bool) or event < 0:
        raise DirectoryError(f"{what} has a malformed event position")
    return leaf


def _check_one(
    item: Mapping[str, Any], size: int, root: bytes, what: str, *, decode: Any
) -> tuple[int, Mapping[str, Any]]:
    index = item.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise DirectoryError(f"{what} has no index")
    leaf = _check_leaf(item.get("leaf"), what)
    raw = item.get("hashes")
    if not isinstance(raw, list):
        raise DirectoryError(f"{what} has no proof hashes")
    try:
        hashes = [decode(h) for h in raw]
    except (ValueError, TypeError) as exc:
        raise DirectoryError(f"{what} has malformed proof hashes") from exc
    if not merkle.verify_inclusion(_leaf_hash(leaf), index, size, hashes, root):
        raise DirectoryError(f"{what}'s inclusion proof does not verify against the signed root")
    return index, leaf


def verify_entry(
    proof: Mapping[str, Any], agency: str, size: int, root: bytes, *, decode: Any
) -> DirectoryProof:
    """Verify a directory proof for ``agency`` against a signed directory ``(size, root)``.

    ``decode`` turns one served hash (standard base64) into 32 bytes. Holds
    only if the agency's leaf is included at ``index``, and the neighbours
    served are included at ``index - 1`` (unless ``index`` is 0) and
    ``index + 1`` (unless it is the last) with agency ids strictly below and
    above: in a sorted tree this proves there is exactly one leaf for the
    agency. Raises ``DirectoryError`` otherwise.
    """
    if proof.get("directory_size") != size:
        raise DirectoryError(
            f"the proof is for a directory of {proof.get('directory_size')} agencies, "
            f"the checkpoint commits to {size}"
        )
    index, leaf = _check_one(proof, size, root, "the agency's directory leaf", decode=decode)
    if leaf["agency"] != agency:
        raise DirectoryError(f"the directory leaf served is agency {leaf['agency']}'s")
    neighbours = proof.get("neighbours")
    if not isinstance(neighbours, list):
        raise DirectoryError("the proof has no neighbours")
    seen: dict[int, Mapping[str, Any]] = {}
    for item in neighbours:
        if not isinstance(item, Mapping):
            raise DirectoryError("a neighbour is not an object")
        i, n = _check_one(item, size, root, "a neighbouring leaf", decode=decode)
        seen[i] = n
    expected = [i for i in (index - 1, index + 1) if 0 <= i < size]
    if sorted(seen) != expected:
        raise DirectoryError(
            "the proof does not show both neighbours of the agency's leaf, so it does not "
            "prove the directory holds a single leaf for the agency"
        )
    if index - 1 in seen and not seen[index - 1]["agency"] < agency:
        raise DirectoryError(f"the directory holds more than one leaf for agency {agency}")
    if index + 1 in seen and not agency < seen[index + 1]["agency"]:
        raise DirectoryError(f"the directory holds more than one leaf for agency {agency}")
    return DirectoryProof(
        agency=agency,
        status=leaf["status"],
        enc_kid=leaf["enc_kid"],
        sig_kid=leaf["sig_kid"],
        event=leaf["event"],
    )


def replay(events: Iterable[tuple[int, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The directory state after folding ``(seq, event)`` pairs in order."""
    state: dict[str, dict[str, Any]] = {}
    for seq, event in events:
        apply_event(state, seq, event)
    return state


def same_root(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
