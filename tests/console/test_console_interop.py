"""The console's crypto and the Python SDK's read each other's output.

Python seals a referral, signs a status with a note, seals a key file, signs a
checkpoint (with a witness cosignature written here from the C2SP
tlog-cosignature text) and builds every Merkle proof up to 17 leaves; the
console's code (``console/test/interop.ts`` under Node) must accept all of it
and refuse altered copies. It then seals its own referral, amendment, status
and key file, which the server's checks and the Python SDK must accept.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nacl.signing

from app.client.keyfile import KeyFile
from app.crypto import envelope as env
from app.crypto import keys, merkle
from app.crypto.checkpoint import sign_checkpoint, verifier_key
from app.crypto.encoding import b64_encode, b64url_encode
from app.crypto.passphrase import MEMLIMIT_INTERACTIVE, OPSLIMIT_INTERACTIVE
from app.crypto.wire import Amendment, EnvelopeIn
from tests.console import node

FIELDS = {"full_name": "Ana Pérez ✔", "narrative": "Line one.\nLine \"two\".", "language": "es"}
NOTE = "Intake Tuesday 10:00; bring ID if safe ✔"
COSIGNATURE_V1 = b"\x04"  # tlog-cosignature: Ed25519 cosignature/v1 key type
PASSPHRASE = "correct horse battery staple ✔"


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _nodes(leaves: list[bytes]) -> dict[tuple[int, int], bytes]:
    nodes = {(0, i): h for i, h in enumerate(leaves)}
    level = 0
    while any((level, i) in nodes and (level, i + 1) in nodes for i in range(0, len(leaves), 2)):
        for i in range(0, len(leaves) >> level, 2):
            if (level, i) in nodes and (level, i + 1) in nodes:
                left, right = nodes[(level, i)], nodes[(level, i + 1)]
                nodes[(level + 1, i // 2)] = merkle.node_hash(left, right)
        level += 1
    return nodes


def _proofs(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    leaves = [merkle.leaf_hash(f"event {i}".encode()) for i in range(n)]
    nodes = _nodes(leaves)
    root = {size: merkle.root_from_leaf_hashes(leaves[:size]) for size in range(1, n + 1)}
    inclusion = [
        {"leaf": b64_encode(leaves[i]), "index": i, "size": size, "root": b64_encode(root[size]),
         "hashes": [b64_encode(x) for x in merkle.inclusion_proof(i, size, nodes)]}
        for size in range(1, n + 1) for i in range(size)
    ]
    consistency = [
        {"first": a, "second": b, "first_root": b64_encode(root[a]),
         "second_root": b64_encode(root[b]),
         "hashes": [b64_encode(x) for x in merkle.consistency_proof(a, b, nodes)]}
        for b in range(1, n + 1) for a in range(1, b + 1)
    ]
    return inclusion, consistency


def _cosign(note: str, name: str, seed: bytes) -> tuple[str, str]:
    """A cosignature/v1 line for ``note`` and the witness vkey (C2SP tlog-cosignature)."""
    key = nacl.signing.SigningKey(seed)
    public = bytes(key.verify_key)
    key_id = hashlib.sha256(name.encode() + b"\n" + COSIGNATURE_V1 + public).digest()[:4]
    text = note[: note.index("\n\n") + 1]
    stamp = int(time.time())
    signature = key.sign(f"cosignature/v1\ntime {stamp}\n".encode() + text.encode()).signature
    line = f"\u2014 {name} {b64_encode(key_id + struct.pack('>Q', stamp) + signature)}\n"
    vkey = f"{name}+{key_id.hex()}+{b64_encode(COSIGNATURE_V1 + public)}"
    return note + line, vkey


def test_console_and_python_open_each_others_referrals_statuses_and_key_files(
    tmp_path: Path,
) -> None:
    sender = KeyFile.generate(agency_id=str(uuid.uuid4()), role="caseworker")
    recipient = KeyFile.generate(agency_id=str(uuid.uuid4()), role="liaison")
    assert sender.agency_id is not None
    assert recipient.agency_id is not None
    now = datetime.now(UTC).replace(microsecond=0)
    created_at, expires_at = _rfc3339(now), _rfc3339(now + timedelta(days=30))
    sealed = env.seal_envelope(
        referral_id=str(uuid.uuid4()), sender_agency=sender.agency_id,
        sender_sig_seed=sender.sig_seed, sender_enc_public=sender.enc_public, fields=FIELDS,
        grants=[env.Grant("full_name", recipient.agency_id, recipient.enc_public,
                          "investigation", expires_at)],
        requests=[env.Request(recipient.agency_id, ("investigation",), "urgent", None)],
        created_at=created_at,
    )
    note = env.seal_note(NOTE, sender.enc_public)
    status = env.sign_status(
        referral_id=sealed.body["manifest"]["referral_id"], recipient=recipient.agency_id,
        status="accepted", reason=None, note=note, signed_at="2026-11-20T12:30:00.5Z",
        sig_seed=recipient.sig_seed,
    )
    log_seed = bytes(range(32))
    inclusion, consistency = _proofs(17)
    checkpoint, witness_key = _cosign(
        sign_checkpoint("refgate.test/log", 17, merkle.root_from_leaf_hashes(
            [merkle.leaf_hash(f"event {i}".encode()) for i in range(17)]), log_seed),
        "witness.test/w1", bytes(range(1, 33)),
    )

    def secrets(k: KeyFile) -> dict[str, str]:
        return {"agency_id": str(k.agency_id), "enc_private": b64url_encode(k.enc_private),
                "sig_seed": b64url_encode(k.sig_seed), "auth_seed": b64url_encode(k.auth_seed)}

    inp = {
        "sender": secrets(sender), "recipient": secrets(recipient), "fields": FIELDS,
        "expect_recipient_fields": {"full_name": FIELDS["full_name"]},
        "envelope": sealed.body, "status": status, "note": NOTE,
        "keyfile_text": json.dumps(sender.to_json(
            PASSPHRASE.encode(), opslimit=OPSLIMIT_INTERACTIVE, memlimit=MEMLIMIT_INTERACTIVE)),
        "keyfile_public": vars(sender.public_keys()),
        "passphrase": PASSPHRASE,
        "checkpoint": checkpoint, "witness_key": witness_key,
        "log_key": verifier_key("refgate.test/log", keys.sig_public_from_seed(log_seed)),
        "tree_size": 17,
        "root": b64_encode(merkle.root_from_leaf_hashes(
            [merkle.leaf_hash(f"event {i}".encode()) for i in range(17)])),
        "inclusion": inclusion, "consistency": consistency,
        "created_at": created_at, "expires_at": expires_at,
    }
    (tmp_path / "in.json").write_text(json.dumps(inp))
    with node.exclusive():  # the build rewrites dist-test/, which npm test runs too
        node.run([node.npm(), "run", "--silent", "build", "--", "--tests"])
        node.run([node.node(), "dist-test/interop.mjs", str(tmp_path / "in.json"),
                  str(tmp_path / "out.json")])
    out = json.loads((tmp_path / "out.json").read_text())

    body = EnvelopeIn.model_validate(out["envelope"], strict=True)
    checked = env.check_envelope(body, sender_sig_public=keys.sig_public_from_seed(sender.sig_seed))
    assert checked.recipients == {recipient.agency_id}
    opened = env.open_envelope(out["envelope"], agency_id=recipient.agency_id,
                               enc_private=recipient.enc_private,
                               sender_sig_public=keys.sig_public_from_seed(sender.sig_seed))
    assert opened.fields == {"full_name": FIELDS["full_name"]}
    own = env.open_envelope(out["envelope"], agency_id=sender.agency_id,
                            enc_private=sender.enc_private,
                            sender_sig_public=keys.sig_public_from_seed(sender.sig_seed))
    assert own.fields == FIELDS
    assert own.fids == out["fids"]
    env.check_amendment(
        checked.manifest, Amendment.model_validate(out["amendment"], strict=True),
        sender_sig_public=keys.sig_public_from_seed(sender.sig_seed),
        fids=own.fids.values(), recipients=[recipient.agency_id],
    )
    env.verify_status({**out["status"], "recipient": recipient.agency_id},
                      referral_id=body.manifest.referral_id,
                      sig_public=keys.sig_public_from_seed(recipient.sig_seed))
    assert env.open_note(out["status"]["note"], sender.enc_private) == NOTE
    reopened = KeyFile.from_json(out["keyfile"], PASSPHRASE.encode())
    assert reopened.enc_private == sender.enc_private
    assert reopened.auth_seed == sender.auth_seed
    # the onboarding page's key file opens with the SDK and matches its public-key file
    fresh = KeyFile.from_json(out["fresh_keyfile"], PASSPHRASE.encode())
    assert vars(fresh.public_keys()) == {k: out["fresh_public"][k]
                                          for k in ("enc_key", "sign_key", "auth_key")}
    assert (fresh.role, fresh.agency_id, fresh.client_id) == ("liaison", None, None)
