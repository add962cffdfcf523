"""Write ``envelope_v2.json``, the envelope v2 known-answer vector (see README.md here).

Run from the repository root: ``.venv/bin/python tests/vectors/make_envelope_v2.py``.

Agency keys are derived from fixed labels and every random choice of
:func:`seal_envelope` (fids, salts, field keys, nonces, decoys) comes from a
fixed byte stream, so those values are the same on every run. Sealed boxes
(wrapped keys, the status note) are randomized inside libsodium: a new run
gives new wrapped keys, hence new grant disclosures, digests and signature.
The committed file records one run; regenerate it only when the format changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from app.crypto import keys
from app.crypto.canonical import canonical_json
from app.crypto.encoding import b64url_decode, b64url_encode
from app.crypto.envelope import (
    Grant,
    Request,
    disclosure_digest,
    manifest_signing_input,
    note_sha256,
    open_envelope,
    open_note,
    parse_disclosure,
    seal_envelope,
    seal_note,
    sign_status,
    status_signing_input,
)
from app.crypto.wire import FieldValue, GrantValue, RequestValue

OUT = Path(__file__).resolve().parent / "envelope_v2.json"

RANDOM_LABEL = b"refgate/v2/test-vector-random|"
REFERRAL_ID = "3f2b8c4e-9d1a-4c7b-a6e5-0f1d2c3b4a59"
CREATED_AT = "2026-11-20T10:00:00Z"
EXPIRES_AT = "2027-02-18T10:00:00Z"
AGENCY_IDS = {
    "sender": "7d2f4c1e-3a5b-4e6f-8a9b-0c1d2e3f4a5b",
    "shelter": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    "legal": "b7c8d9e0-f1a2-4b3c-9d4e-5f6a7b8c9d0e",
    "bystander": "c0ffee00-1234-4567-89ab-cdef01234567",
}
FIELDS = {
    "full_name": "Ana Pérez",
    "date_of_birth": "1994-03-07",
    "language": "es",
    "narrative": "Recruited online; documents withheld. \"Debt\" of $4,000.\nNeeds counsel.",
    "immigration_status": "T-visa applicant",
    "safety_concerns": "Do not call after 6pm ✔",
}
GRANTS = [
    ("full_name", "shelter", "safety_planning", None),
    ("language", "shelter", "safety_planning", None),
    ("safety_concerns", "shelter", "safety_planning", None),
    ("full_name", "legal", "service_provision", "sha256:release-form-0042"),
    ("narrative", "legal", "service_provision", "sha256:release-form-0042"),
    ("immigration_status", "legal", "service_provision", "sha256:release-form-0042"),
]
REQUESTS = [
    ("shelter", ("shelter", "safety_planning"), "urgent", "CASE-2026-0042"),
    ("legal", ("immigration_legal", "legal"), "routine", None),
]
NOTE = "Intake Tuesday 10:00; bring ID if safe ✔"
STATUS: dict[str, str | None] = {
    "recipient": "shelter",
    "status": "accepted",
    "reason": None,
    "note": NOTE,
    "signed_at": "2026-11-20T12:30:00.5Z",
}


class Stream:
    """SHA-256(label || uint32 big-endian counter), blocks concatenated; records each draw."""

    def __init__(self, label: bytes) -> None:
        self.label = label
        self.buffer = b""
        self.counter = 0
        self.draws: list[str] = []

    def __call__(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += hashlib.sha256(self.label + self.counter.to_bytes(4, "big")).digest()
            self.counter += 1
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        self.draws.append(out.hex())
        return out


def agency_keys(role: str) -> keys.AgencyKeys:
    enc = hashlib.sha256(f"refgate/v2/test-vector|{role}|enc".encode()).digest()
    sig = hashlib.sha256(f"refgate/v2/test-vector|{role}|sig".encode()).digest()
    return keys.AgencyKeys.from_private(enc, sig)


def served_to(body: dict[str, Any], agency: str) -> dict[str, Any]:
    """What the server answers ``agency`` (DESIGN.md, "Envelope v2"), statuses aside."""
    parsed = [parse_disclosure(d) for d in body["disclosures"]]
    grants = {
        p.value.fid for p in parsed
        if isinstance(p.value, GrantValue) and p.value.recipient == agency
    }
    keep = [
        p.disclosure for p in parsed
        if (isinstance(p.value, GrantValue | RequestValue) and p.value.recipient == agency)
        or (isinstance(p.value, FieldValue) and p.value.fid in grants)
    ]
    return {
        "manifest": body["manifest"],
        "signature": body["signature"],
        "disclosures": keep,
        "ciphertexts": {f: c for f, c in body["ciphertexts"].items() if f in grants},
        "wrapped_keys": [w for w in body["wrapped_keys"] if w["recipient"] == agency],
    }


def main() -> None:
    agencies = {role: agency_keys(role) for role in AGENCY_IDS}
    sender = agencies["sender"]
    random = Stream(RANDOM_LABEL)
    sealed = seal_envelope(
        referral_id=REFERRAL_ID,
        sender_agency=AGENCY_IDS["sender"],
        sender_sig_seed=sender.sig_seed,
        sender_enc_public=sender.enc_public,
        fields=FIELDS,
        grants=[
            Grant(f, AGENCY_IDS[r], agencies[r].enc_public, p, EXPIRES_AT, ref)
            for f, r, p, ref in GRANTS
        ],
        requests=[Request(AGENCY_IDS[r], s, u, c) for r, s, u, c in REQUESTS],
        created_at=CREATED_AT,
        unsafe_random=random,
    )
    body = sealed.body
    fids = sealed.fids
    field_keys = open_envelope(
        body, agency_id=AGENCY_IDS["sender"], enc_private=sender.enc_private,
        sender_sig_public=sender.sig_public,
    ).field_keys

    fields = []
    for name, value in FIELDS.items():
        fid = fids[name]
        blob = b64url_decode(body["ciphertexts"][fid])
        key = field_keys[fid]
        aad = f"refgate/v2|{REFERRAL_ID}|{fid}"
        commitment_input = f"refgate/v2/commit|{REFERRAL_ID}|{fid}"
        commitment = hashlib.blake2b(commitment_input.encode(), key=key, digest_size=32).digest()
        plaintext = canonical_json({"name": name, "value": value})
        fields.append({
            "name": name,
            "value": value,
            "fid": fid,
            "fid_hex": b64url_decode(fid).hex(),
            "key_hex": key.hex(),
            "nonce_hex": blob[:24].hex(),
            "aad": aad,
            "commitment_input": commitment_input,
            "commitment": b64url_encode(commitment),
            "commitment_hex": commitment.hex(),
            "plaintext": plaintext.decode("utf-8"),
            "plaintext_hex": plaintext.hex(),
            "ciphertext": body["ciphertexts"][fid],
            "ciphertext_hex": blob.hex(),
            "ciphertext_sha256": b64url_encode(hashlib.sha256(blob).digest()),
            "ciphertext_sha256_hex": hashlib.sha256(blob).hexdigest(),
        })

    disclosures = []
    for d in body["disclosures"]:
        decoded = b64url_decode(d).decode("utf-8")
        disclosures.append({
            "disclosure": d,
            "json": decoded,
            "decoded": json.loads(decoded),
            "digest": disclosure_digest(d),
            "digest_hex": hashlib.sha256(d.encode("ascii")).hexdigest(),
        })
    disclosed = {x["digest"] for x in disclosures}

    wrapped = []
    for w in body["wrapped_keys"]:
        data = b64url_decode(w["wrapped_key"])
        wrapped.append({
            **w,
            "wrapped_key_hex": data.hex(),
            "wrapped_key_sha256": b64url_encode(hashlib.sha256(data).digest()),
            "field_key_hex": field_keys[w["fid"]].hex(),
        })

    manifest = body["manifest"]
    canonical = canonical_json(manifest)
    signing_input = manifest_signing_input(manifest)
    by_id = {v: k for k, v in AGENCY_IDS.items()}

    opened = {}
    served = {}
    for role, agency in agencies.items():
        # the sender reads everything; a bystander is answered 404 and sees nothing
        view = body if role in ("sender", "bystander") else served_to(body, AGENCY_IDS[role])
        if view is not body:
            served[role] = view
        o = open_envelope(
            view, agency_id=AGENCY_IDS[role], enc_private=agency.enc_private,
            sender_sig_public=sender.sig_public,
        )
        opened[role] = {
            "fields": o.fields,
            "requests": {by_id[r]: v.model_dump() for r, v in o.requests.items()},
        }

    note = seal_note(NOTE, sender.enc_public)
    assert open_note(note, sender.enc_private) == NOTE
    recipient = AGENCY_IDS[str(STATUS["recipient"])]
    status_body = sign_status(
        referral_id=REFERRAL_ID, recipient=recipient, status=str(STATUS["status"]),
        reason=None, note=note, signed_at=str(STATUS["signed_at"]),
        sig_seed=agencies[str(STATUS["recipient"])].sig_seed,
    )
    status_input = status_signing_input(
        referral_id=REFERRAL_ID, recipient=recipient, status=str(STATUS["status"]), reason=None,
        note_sha256=note_sha256(note), signed_at=str(STATUS["signed_at"]),
    )
    status_object = json.loads(status_input.split(b"\n", 1)[1])

    vector = {
        "description": "refgate envelope v2 known-answer vector; see README.md in this directory",
        "v": 2,
        "random": {
            "construction": "SHA-256(label || uint32 big-endian counter) blocks, concatenated; "
            "seal_envelope draws from it in order",
            "label": RANDOM_LABEL.decode("ascii"),
            "draws_hex": random.draws,
        },
        "referral_id": REFERRAL_ID,
        "created_at": CREATED_AT,
        "agencies": {
            role: {
                "id": AGENCY_IDS[role],
                "enc_private_hex": a.enc_private.hex(),
                "enc_public": b64url_encode(a.enc_public),
                "enc_public_hex": a.enc_public.hex(),
                "enc_kid": a.enc_kid,
                "sig_seed_hex": a.sig_seed.hex(),
                "sig_public": b64url_encode(a.sig_public),
                "sig_public_hex": a.sig_public.hex(),
                "sig_kid": a.sig_kid,
            }
            for role, a in agencies.items()
        },
        "inputs": {
            "fields": FIELDS,
            "grants": [
                {"field": f, "recipient": r, "purpose": p, "expires_at": EXPIRES_AT,
                 "release_ref": ref}
                for f, r, p, ref in GRANTS
            ],
            "requests": [
                {"recipient": r, "services": list(s), "urgency": u, "case_ref": c}
                for r, s, u, c in REQUESTS
            ],
        },
        "fields": fields,
        "disclosures": disclosures,
        "decoys": [d for d in manifest["digests"] if d not in disclosed],
        "wrapped_keys": wrapped,
        "manifest": manifest,
        "manifest_canonical": canonical.decode("utf-8"),
        "manifest_canonical_sha256_hex": hashlib.sha256(canonical).hexdigest(),
        "signing_input_sha256_hex": hashlib.sha256(signing_input).hexdigest(),
        "signature": body["signature"],
        "signature_hex": b64url_decode(body["signature"]).hex(),
        "body": body,
        "served": served,
        "opened": opened,
        "status": {
            "inputs": {**STATUS, "referral_id": REFERRAL_ID, "recipient": recipient},
            "note": note,
            "note_sha256": note_sha256(note),
            "signed_object": status_object,
            "signing_input": status_input.decode("utf-8"),
            "signing_input_sha256_hex": hashlib.sha256(status_input).hexdigest(),
            "signature_hex": b64url_decode(status_body["signature"]).hex(),
            "body": status_body,
        },
    }
    OUT.write_text(json.dumps(vector, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
