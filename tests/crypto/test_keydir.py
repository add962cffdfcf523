"""The key directory tree (app.crypto.keydir) and the checkpoint's directory line."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.crypto import keydir, merkle
from app.crypto.checkpoint import (
    CheckpointError,
    directory_line,
    open_checkpoint,
    sign_checkpoint,
    verifier_key,
)
from app.crypto.encoding import b64_decode, b64_encode
from app.crypto.keys import generate_signing_key

ORIGIN = "example.org/log"


def _event(action: str, agency: str, **detail: Any) -> dict[str, Any]:
    resource = agency if action.startswith("agency:") else detail.get("kid")
    return {"action": action, "outcome": "ok", "resource_id": resource,
            "detail": {"agency": agency, **detail}}


def _leaves(n: int) -> list[dict[str, Any]]:
    return [{"agency": f"a{i:03d}", "status": "active", "enc_kid": f"e{i}", "sig_kid": f"s{i}",
             "event": i} for i in range(n)]


def _decode(h: object) -> bytes:
    assert isinstance(h, str)
    return b64_decode(h, length=32)


def _served(proof: dict[str, Any]) -> dict[str, Any]:
    return {**proof, "hashes": [b64_encode(h) for h in proof["hashes"]],
            "neighbours": [{**n, "hashes": [b64_encode(h) for h in n["hashes"]]}
                           for n in proof["neighbours"]]}


def test_key_events_fold_into_one_leaf_per_agency_in_log_order() -> None:
    state: dict[str, dict[str, Any]] = {}
    events = [
        _event("agency:create", "b"),
        _event("key:register", "b", use="enc", kid="E1"),
        _event("key:register", "b", use="sig", kid="S1"),
        _event("agency:create", "a"),
        _event("referral:read", "b"),  # not a key event
        {**_event("key:rotate", "b", use="enc", kid="EVIL"), "outcome": "denied"},
        _event("key:rotate", "b", use="enc", kid="E2"),
        {**_event("agency:suspend", "b"), "detail": {"from": "active", "to": "suspended"}},
    ]
    changed = [keydir.apply_event(state, seq, e) for seq, e in enumerate(events)]
    assert changed == ["b", "b", "b", "a", None, None, "b", "b"]
    assert keydir.sorted_leaves(state) == [
        {"agency": "a", "status": "active", "enc_kid": None, "sig_kid": None, "event": 3},
        {"agency": "b", "status": "suspended", "enc_kid": "E2", "sig_kid": "S1", "event": 7},
    ]


def test_directory_root_is_the_rfc6962_root_of_the_canonical_leaves() -> None:
    leaves = _leaves(5)
    size, root = keydir.root_of(leaves)
    expected = merkle.root_from_leaf_hashes(merkle.leaf_hash(keydir.leaf_bytes(x)) for x in leaves)
    assert (size, root) == (5, expected)
    assert keydir.root_of([]) == (0, merkle.EMPTY_ROOT)
    assert keydir.leaf_bytes(leaves[0]) == (
        b'{"agency":"a000","enc_kid":"e0","event":0,"sig_kid":"s0","status":"active"}'
    )


@given(st.integers(min_value=1, max_value=20), st.data())
def test_every_agency_proves_its_single_leaf_with_its_neighbours(
    n: int, data: st.DataObject
) -> None:
    leaves = _leaves(n)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    size, root = keydir.root_of(leaves)
    proof = keydir.prove(leaves, leaves[i]["agency"])
    assert proof is not None
    got = keydir.verify_entry(_served(proof), leaves[i]["agency"], size, root, decode=_decode)
    assert (got.enc_kid, got.sig_kid, got.event) == (f"e{i}", f"s{i}", i)


def test_a_duplicated_leaf_for_one_agency_is_refused() -> None:
    leaves = _leaves(4)
    leaves.insert(2, {**leaves[1], "enc_kid": "evil"})
    size, root = keydir.root_of(leaves)
    proof = keydir.prove(leaves, "a001")
    assert proof is not None
    with pytest.raises(keydir.DirectoryError, match="more than one leaf for agency a001"):
        keydir.verify_entry(_served(proof), "a001", size, root, decode=_decode)


@pytest.mark.parametrize("lie", ["drop-neighbour", "other-agency", "rewrite-leaf", "size"])
def test_a_proof_that_does_not_hold_is_refused(lie: str) -> None:
    leaves = _leaves(6)
    size, root = keydir.root_of(leaves)
    proof = _served(keydir.prove(leaves, "a002") or {})
    agency = "a002"
    if lie == "drop-neighbour":
        proof["neighbours"] = proof["neighbours"][:1]
    elif lie == "other-agency":
        agency = "a009"
    elif lie == "rewrite-leaf":
        proof["leaf"] = {**proof["leaf"], "enc_kid": "rolled-back"}
    else:
        proof["directory_size"] = size + 1
    with pytest.raises(keydir.DirectoryError):
        keydir.verify_entry(proof, agency, size, root, decode=_decode)


def test_checkpoint_carries_and_parses_its_directory_line() -> None:
    key = generate_signing_key()
    root = b"\x02" * 32
    note = sign_checkpoint(ORIGIN, 9, b"\x01" * 32, key.seed,
                           extensions=(directory_line(4, root),))
    assert note.split("\n")[3] == "directory 4 " + "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
    cp = open_checkpoint(note, verifier_key(ORIGIN, key.public))
    assert cp.directory == (4, root)
    plain = open_checkpoint(sign_checkpoint(ORIGIN, 9, b"\x01" * 32, key.seed),
                            verifier_key(ORIGIN, key.public))
    assert plain.directory is None


@pytest.mark.parametrize("lines", [
    ("directory 4 AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",) * 2,
    ("directory 04 AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",),
    ("directory 4 AgIC",),
    ("directory 4",),
])
def test_a_malformed_directory_line_is_refused(lines: tuple[str, ...]) -> None:
    key = generate_signing_key()
    with pytest.raises(CheckpointError, match="directory"):
        sign_checkpoint(ORIGIN, 9, b"\x01" * 32, key.seed, extensions=lines)
