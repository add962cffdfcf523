"""Envelope v1: round trips, refusals, tampering, a dishonest sender, and the KAT vector.

The known-answer test recomputes the vector with primitives independent of PyNaCl
(hashlib, and the ``cryptography`` package for Ed25519 and ChaCha20-Poly1305 with an
HChaCha20 written out below), so it checks the format, not just our own code against
itself.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.crypto import keys
from app.crypto.canonical import canonical_json
from app.crypto.encoding import b64url_decode, b64url_encode
from app.crypto.envelope import (
    ERROR_CODES,
    FIELD_NAME_RE,
    PURPOSES,
    STANDARD_FIELDS,
    Consent,
    EnvelopeError,
    add_grants,
    check_envelope,
    check_grant_update,
    manifest_signing_input,
    open_envelope,
    open_note,
    seal_envelope,
    seal_note,
    sign_manifest,
    verify_manifest,
)

VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "envelope_v1.json"
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SENDER, SHELTER, LEGAL, POLICE = "agency-sender", "agency-shelter", "agency-legal", "agency-police"
KEYS = {name: keys.generate_agency_keys() for name in (SENDER, SHELTER, LEGAL, POLICE)}
CREATED = "2026-11-20T10:00:00Z"
EXPIRES = "2027-02-18T10:00:00Z"
FIELDS = {
    "full_name": "Ana Pérez",
    "contact": "+1 555 0100",
    "narrative": "Recruited online; documents withheld.",
    "safety_concerns": "Do not call after 6pm.",
}


def consent(field: str, recipient: str, purpose: str = "service_provision", **kw: Any) -> Consent:
    k = KEYS[recipient]
    params: dict[str, Any] = {"expires_at": EXPIRES, "release_ref": None} | kw
    return Consent(field, recipient, k.enc_kid, k.enc_public, purpose, **params)


CONSENTS = [
    consent("full_name", SHELTER, "safety_planning"),
    consent("safety_concerns", SHELTER, "safety_planning"),
    consent("full_name", LEGAL, release_ref="sha256:release-form-1"),
    consent("narrative", LEGAL),
]
SHELTER_SEES = {"full_name", "safety_concerns"}
LEGAL_SEES = {"full_name", "narrative"}


def seal(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "referral_id": str(uuid.uuid4()),
        "sender_agency": SENDER,
        "sender_sig_seed": KEYS[SENDER].sig_seed,
        "sender_enc_public": KEYS[SENDER].enc_public,
        "recipients": [SHELTER, LEGAL],
        "fields": FIELDS,
        "consents": CONSENTS,
        "metadata": {"services": ["shelter", "legal_aid"], "urgency": "urgent", "case_ref": "C-1"},
        "created_at": CREATED,
    } | overrides
    return seal_envelope(**params)


def open_as(envelope: dict[str, Any], agency: str) -> dict[str, str]:
    return open_envelope(
        envelope,
        agency_id=agency,
        enc_private=KEYS[agency].enc_private,
        sender_sig_public=KEYS[SENDER].sig_public,
    )


def check(envelope: dict[str, Any], **kw: Any) -> None:
    check_envelope(envelope, sender_sig_public=KEYS[SENDER].sig_public, **kw)


def as_served_to(envelope: dict[str, Any], agency: str) -> dict[str, Any]:
    """What GET /v1/referrals/{id} returns to ``agency``: its own wrapped keys only."""
    own = [w for w in envelope["wrapped_keys"] if w["recipient"] == agency]
    fields = {w["field"] for w in own}
    return {
        "manifest": envelope["manifest"],
        "signature": envelope["signature"],
        "ciphertexts": {f: c for f, c in envelope["ciphertexts"].items() if f in fields},
        "wrapped_keys": own,
        "statuses": [{"recipient": agency, "status": "received", "updated_at": CREATED}],
    }


def resign(envelope: dict[str, Any], seed: bytes | None = None) -> dict[str, Any]:
    """Re-sign the manifest as someone holding the sender's signing key would."""
    envelope["signature"] = sign_manifest(envelope["manifest"], seed or KEYS[SENDER].sig_seed)
    return envelope


def commit(key: bytes, referral_id: str, field: str) -> bytes:
    message = f"refgate/v1/commit|{referral_id}|{field}".encode()
    return hashlib.blake2b(message, key=key, digest_size=32).digest()


def grant_of(envelope: dict[str, Any], field: str, recipient: str) -> dict[str, Any]:
    grants: list[dict[str, Any]] = envelope["manifest"]["grants"]
    (grant,) = [g for g in grants if g["field"] == field and g["recipient"] == recipient]
    return grant


def wrapped_of(envelope: dict[str, Any], field: str, recipient: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = envelope["wrapped_keys"]
    (entry,) = [w for w in entries if w["field"] == field and w["recipient"] == recipient]
    return entry


def set_wrapped_key(envelope: dict[str, Any], field: str, recipient: str, data: bytes) -> None:
    """Replace a wrapped key and its signed hash (the signature must be redone)."""
    wrapped_of(envelope, field, recipient)["wrapped_key"] = b64url_encode(data)
    grant_of(envelope, field, recipient)["wrapped_key_sha256"] = b64url_encode(
        hashlib.sha256(data).digest()
    )


def set_ciphertext(envelope: dict[str, Any], field: str, blob: bytes) -> None:
    envelope["ciphertexts"][field] = b64url_encode(blob)
    envelope["manifest"]["fields"][field]["ciphertext_sha256"] = b64url_encode(
        hashlib.sha256(blob).digest()
    )


def unwrap_as_sender(envelope: dict[str, Any], field: str) -> bytes:
    data = b64url_decode(wrapped_of(envelope, field, SENDER)["wrapped_key"])
    return keys.unseal(KEYS[SENDER].enc_private, data)


def refused(code: str) -> Any:
    return pytest.raises(EnvelopeError, match=f"^{code}: ")


BASE = seal()


# --------------------------------------------------------------------------
# round trips


def test_each_recipient_opens_exactly_its_consented_fields() -> None:
    check(BASE)
    assert open_as(BASE, SHELTER) == {f: FIELDS[f] for f in SHELTER_SEES}
    assert open_as(BASE, LEGAL) == {f: FIELDS[f] for f in LEGAL_SEES}


def test_sender_opens_every_field_through_its_own_grants() -> None:
    assert open_as(BASE, SENDER) == FIELDS
    for field in FIELDS:
        grant = grant_of(BASE, field, SENDER)
        assert grant["purpose"] == "sender"
        assert grant["expires_at"] is None
        assert grant["release_ref"] is None
        assert grant["kid"] == KEYS[SENDER].enc_kid


def test_an_agency_with_no_grant_opens_nothing() -> None:
    assert open_as(BASE, POLICE) == {}


def test_the_filtered_envelope_a_recipient_is_served_opens_and_ignores_statuses() -> None:
    for agency, sees in ((SHELTER, SHELTER_SEES), (LEGAL, LEGAL_SEES), (SENDER, set(FIELDS))):
        assert open_as(as_served_to(BASE, agency), agency) == {f: FIELDS[f] for f in sees}


def test_manifest_shape_matches_the_wire_format() -> None:
    manifest = BASE["manifest"]
    assert set(BASE) == {"manifest", "signature", "ciphertexts", "wrapped_keys"}
    assert manifest["v"] == 1
    assert manifest["sender_kid"] == KEYS[SENDER].sig_kid
    assert manifest["recipients"] == [SHELTER, LEGAL]
    assert set(manifest["fields"]) == set(FIELDS)
    assert all(set(f) == {"ciphertext_sha256", "commitment"} for f in manifest["fields"].values())
    order = [(g["field"], g["recipient"]) for g in manifest["grants"]]
    assert order == sorted(order)
    assert len(order) == len(FIELDS) + len(CONSENTS)
    assert [(w["field"], w["recipient"]) for w in BASE["wrapped_keys"]] == order


def test_fresh_keys_and_nonces_every_time() -> None:
    again = seal(referral_id=BASE["manifest"]["referral_id"])
    for field in FIELDS:
        assert again["ciphertexts"][field][:32] != BASE["ciphertexts"][field][:32]
        assert unwrap_as_sender(again, field) != unwrap_as_sender(BASE, field)


def test_signature_is_over_the_prefixed_canonical_manifest() -> None:
    signing_input = manifest_signing_input(BASE["manifest"])
    assert signing_input == b"refgate/v1/manifest\n" + canonical_json(BASE["manifest"])
    assert keys.verify(KEYS[SENDER].sig_public, signing_input, b64url_decode(BASE["signature"]))
    verify_manifest(BASE["manifest"], BASE["signature"], KEYS[SENDER].sig_public)
    with refused("bad-signature"):
        verify_manifest(BASE["manifest"], BASE["signature"], KEYS[SHELTER].sig_public)


def test_the_envelope_survives_a_json_round_trip() -> None:
    wire = json.loads(json.dumps(BASE))
    check(wire)
    assert open_as(wire, LEGAL) == {f: FIELDS[f] for f in LEGAL_SEES}


def test_public_constants() -> None:
    assert all(FIELD_NAME_RE.fullmatch(name) for name in STANDARD_FIELDS)
    assert FIELD_NAME_RE.fullmatch("name\n") is None
    assert "sender" not in PURPOSES


# --------------------------------------------------------------------------
# what seal_envelope refuses


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"recipients": []}, "invalid-recipient"),
        ({"recipients": [SHELTER, LEGAL, SENDER]}, "invalid-recipient"),
        ({"recipients": [SHELTER, LEGAL, SHELTER]}, "invalid-recipient"),
        ({"recipients": SHELTER}, "malformed"),
        ({"fields": {}, "consents": []}, "invalid-field"),
        ({"fields": {"Full_name": "x"}, "consents": []}, "invalid-field"),
        ({"fields": {"1st": "x"}, "consents": []}, "invalid-field"),
        ({"fields": {"a" * 65: "x"}, "consents": []}, "invalid-field"),
        ({"fields": {"name\n": "x"}, "consents": []}, "invalid-field"),
        ({"fields": {"name": b"bytes"}, "consents": []}, "invalid-field"),
        ({"fields": {"name": "\ud800"}, "consents": []}, "invalid-field"),
        ({"consents": [consent("medical_needs", SHELTER)]}, "consent-mismatch"),
        ({"consents": [consent("full_name", POLICE)]}, "invalid-recipient"),
        ({"consents": [consent("full_name", SHELTER)] * 2}, "malformed"),
        ({"consents": [consent("full_name", SHELTER, "curiosity")]}, "invalid-consent"),
        ({"consents": [consent("full_name", SHELTER, "sender")]}, "invalid-consent"),
        ({"consents": [consent("full_name", SHELTER, expires_at=None)]}, "invalid-consent"),
        ({"consents": [consent("full_name", SHELTER, expires_at="2027-02-18")]}, "invalid-consent"),
        (
            {"consents": [consent("full_name", SHELTER, expires_at="2027-02-18T10:00:00+00:00")]},
            "invalid-consent",
        ),
        ({"consents": [consent("full_name", SHELTER, expires_at=CREATED)]}, "invalid-consent"),
        ({"consents": [consent("full_name", SHELTER, release_ref="")]}, "invalid-consent"),
        (
            {
                "consents": [
                    Consent(
                        "full_name",
                        SHELTER,
                        KEYS[LEGAL].enc_kid,
                        KEYS[SHELTER].enc_public,
                        "service_provision",
                        EXPIRES,
                    )
                ]
            },
            "kid-mismatch",
        ),
        (
            {
                "consents": [
                    Consent(
                        "full_name", SENDER, "x", KEYS[SENDER].enc_public, "investigation", EXPIRES
                    )
                ]
            },
            "invalid-recipient",
        ),
        ({"referral_id": "not-a-uuid"}, "malformed"),
        ({"referral_id": str(uuid.uuid4()).upper()}, "malformed"),
        ({"referral_id": uuid.uuid4().hex}, "malformed"),
        ({"created_at": "2026-11-20 10:00:00Z"}, "malformed"),
        ({"created_at": "2026-02-30T10:00:00Z"}, "malformed"),
        ({"metadata": {"urgency": "whenever"}}, "invalid-metadata"),
        ({"metadata": {"urgency": ["urgent"]}}, "invalid-metadata"),
        ({"metadata": {"services": "shelter"}}, "invalid-metadata"),
        ({"metadata": {"case_ref": 7}}, "invalid-metadata"),
        ({"metadata": {"x": float("nan")}}, "malformed"),
        ({"sender_agency": ""}, "invalid-recipient"),
        ({"unsafe_nonces": {"full_name": b"short"}}, "malformed"),
    ],
)
def test_seal_envelope_refuses(overrides: dict[str, Any], code: str) -> None:
    with refused(code):
        seal(**overrides)


def test_a_recipient_may_be_listed_without_any_grant() -> None:
    envelope = seal(recipients=[SHELTER, LEGAL, POLICE])
    check(envelope)
    assert open_as(envelope, POLICE) == {}


def test_fractional_seconds_are_accepted() -> None:
    check(seal(created_at="2026-11-20T10:00:00.123456789Z"))


def test_envelope_error_codes_are_closed() -> None:
    with pytest.raises(ValueError, match="unknown envelope error code"):
        EnvelopeError("made-up", "x")
    assert "bad-commitment" in ERROR_CODES


# --------------------------------------------------------------------------
# what check_envelope refuses


def mutated(change: Any, *, sign: bool = True) -> dict[str, Any]:
    envelope = copy.deepcopy(BASE)
    change(envelope)
    return resign(envelope) if sign else envelope


def _drop_sender_grant(e: dict[str, Any]) -> None:
    e["manifest"]["grants"].remove(grant_of(e, "contact", SENDER))
    e["wrapped_keys"].remove(wrapped_of(e, "contact", SENDER))


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda e: e["manifest"].update(v=2), "unsupported-version"),
        (lambda e: e["manifest"].update(v=True), "unsupported-version"),
        (lambda e: e["manifest"].update(v="1"), "unsupported-version"),
        (lambda e: e["manifest"].update(extra=1), "malformed"),
        (lambda e: e["manifest"].pop("metadata"), "malformed"),
        (lambda e: e.update(statuses=[]), "malformed"),
        (lambda e: e["ciphertexts"].pop("contact"), "malformed"),
        (lambda e: e["wrapped_keys"].pop(0), "consent-mismatch"),
        (lambda e: e["wrapped_keys"].append(dict(e["wrapped_keys"][0])), "malformed"),
        (lambda e: e["manifest"]["grants"].append(dict(e["manifest"]["grants"][0])), "malformed"),
        (lambda e: e["manifest"]["grants"].reverse(), None),
        (lambda e: e["wrapped_keys"].reverse(), None),
        (
            lambda e: wrapped_of(e, "narrative", LEGAL).update(kid=KEYS[SHELTER].enc_kid),
            "consent-mismatch",
        ),
        (lambda e: grant_of(e, "narrative", LEGAL).update(recipient=POLICE), "invalid-recipient"),
        (lambda e: grant_of(e, "narrative", LEGAL).update(field="language"), "consent-mismatch"),
        (lambda e: grant_of(e, "narrative", LEGAL).update(purpose="sender"), "invalid-consent"),
        (lambda e: grant_of(e, "narrative", LEGAL).update(expires_at=None), "invalid-consent"),
        (
            lambda e: grant_of(e, "narrative", SENDER).update(purpose="investigation"),
            "missing-sender-copy",
        ),
        (
            lambda e: grant_of(e, "narrative", SENDER).update(expires_at=EXPIRES),
            "missing-sender-copy",
        ),
        (lambda e: grant_of(e, "narrative", SENDER).update(release_ref="r"), "invalid-consent"),
        (_drop_sender_grant, "missing-sender-copy"),
        (lambda e: e["manifest"]["recipients"].append(SENDER), "invalid-recipient"),
        (lambda e: e["manifest"].update(sender_kid=KEYS[SHELTER].sig_kid), "kid-mismatch"),
        (lambda e: e["manifest"].update(sender_kid="AAAA"), "bad-encoding"),
        (
            lambda e: e["ciphertexts"].update(contact=e["ciphertexts"]["contact"] + "="),
            "bad-encoding",
        ),
        (lambda e: e["ciphertexts"].update(contact="AAAA"), "bad-encoding"),
        (
            lambda e: wrapped_of(e, "contact", SENDER).update(wrapped_key=b64url_encode(bytes(79))),
            "bad-encoding",
        ),
        (
            lambda e: e["manifest"]["fields"]["contact"].update(
                commitment=b64url_encode(bytes(31))
            ),
            "bad-encoding",
        ),
        (lambda e: e["manifest"]["metadata"].update(urgency="low"), "invalid-metadata"),
        (lambda e: e["manifest"].update(created_at="2026-11-20T10:00:00"), "malformed"),
        (lambda e: e["manifest"].update(referral_id=None), "malformed"),
        (lambda e: e["manifest"].update(grants={}), "malformed"),
        (lambda e: e.update(wrapped_keys={}), "malformed"),
    ],
)
def test_check_envelope_refuses(change: Any, code: str | None) -> None:
    envelope = mutated(change)
    if code is None:  # the server requires no particular order
        check(envelope)
        return
    with refused(code):
        check(envelope)


@pytest.mark.parametrize("signature", ["", "AAAA", BASE["signature"] + "==", None, 7])
def test_a_signature_that_is_not_64_bytes_of_base64url_is_refused(signature: object) -> None:
    envelope = dict(BASE, signature=signature)
    with refused("bad-encoding"):
        check(envelope)
    with refused("bad-encoding"):
        open_as(envelope, LEGAL)


def test_signature_by_another_key_is_refused_even_with_a_matching_kid() -> None:
    envelope = mutated(lambda e: None)
    resign(envelope, KEYS[SHELTER].sig_seed)
    with refused("bad-signature"):
        check(envelope)
    with refused("bad-signature"):
        open_as(envelope, LEGAL)


def test_size_limits() -> None:
    longest = max(len(v.encode()) for v in FIELDS.values())
    check(BASE, max_fields=len(FIELDS), max_field_bytes=longest, max_recipients=2)
    with refused("too-many-fields"):
        check(BASE, max_fields=len(FIELDS) - 1)
    with refused("field-too-large"):
        check(BASE, max_field_bytes=longest - 1)
    with refused("too-many-recipients"):
        check(BASE, max_recipients=1)


# --------------------------------------------------------------------------
# tampering without the sender's key: the signature or a signed hash catches it


def flip(text: str, position: int, mask: int) -> str:
    data = bytearray(b64url_decode(text))
    data[position % len(data)] ^= mask
    return b64url_encode(bytes(data))


def string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in string_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in string_paths(v, (*path, i))]
    return []


MANIFEST_STRINGS = string_paths(BASE["manifest"])


@PROPERTY
@given(
    target=st.sampled_from(["ciphertext", "wrapped_key", "commitment", "signature"]),
    index=st.integers(0, 100),
    position=st.integers(0, 200),
    mask=st.integers(1, 255),
)
def test_any_flipped_byte_is_refused(target: str, index: int, position: int, mask: int) -> None:
    envelope = copy.deepcopy(BASE)
    victim = SENDER  # holds every field, so every ciphertext is on its path
    if target == "ciphertext":
        field = sorted(FIELDS)[index % len(FIELDS)]
        envelope["ciphertexts"][field] = flip(envelope["ciphertexts"][field], position, mask)
    elif target == "wrapped_key":
        entry = envelope["wrapped_keys"][index % len(envelope["wrapped_keys"])]
        entry["wrapped_key"] = flip(entry["wrapped_key"], position, mask)
        victim = entry["recipient"]
    elif target == "commitment":
        field = sorted(FIELDS)[index % len(FIELDS)]
        entry = envelope["manifest"]["fields"][field]
        entry["commitment"] = flip(entry["commitment"], position, mask)
    else:
        envelope["signature"] = flip(envelope["signature"], position, mask)
    with pytest.raises(EnvelopeError):
        check(envelope)
    with pytest.raises(EnvelopeError):
        open_as(envelope, victim)
    with pytest.raises(EnvelopeError):
        open_as(as_served_to(envelope, victim), victim)


@PROPERTY
@given(
    path=st.sampled_from(MANIFEST_STRINGS),
    position=st.integers(0, 200),
    mask=st.integers(1, 0x7F),
    reader=st.sampled_from([SENDER, SHELTER, LEGAL, POLICE]),
)
def test_any_altered_manifest_string_is_refused(
    path: tuple[Any, ...], position: int, mask: int, reader: str
) -> None:
    envelope = copy.deepcopy(BASE)
    parent = envelope["manifest"]
    for step in path[:-1]:
        parent = parent[step]
    text = parent[path[-1]]
    if text:
        i = position % len(text)
        text = text[:i] + chr(ord(text[i]) ^ mask) + text[i + 1 :]
    else:
        text = chr(mask)
    parent[path[-1]] = text
    with pytest.raises(EnvelopeError):
        check(envelope)
    with pytest.raises(EnvelopeError):  # signature first, so even a reader with nothing fails
        open_as(envelope, reader)


# --------------------------------------------------------------------------
# an attacker holding the sender's signing key: hashes and signature are consistent,
# so only the AEAD, the AAD and the key commitment stand in the way


@PROPERTY
@given(
    field=st.sampled_from(sorted(FIELDS)), position=st.integers(0, 200), mask=st.integers(1, 255)
)
def test_resigned_ciphertext_flip_fails_authentication(
    field: str, position: int, mask: int
) -> None:
    envelope = copy.deepcopy(BASE)
    blob = b64url_decode(flip(envelope["ciphertexts"][field], position, mask))
    set_ciphertext(envelope, field, blob)
    resign(envelope)
    check(envelope)
    with refused("decrypt-failed"):
        open_as(envelope, SENDER)


@PROPERTY
@given(
    index=st.integers(0, 100),
    position=st.integers(0, 79),
    mask=st.integers(1, 255),
)
def test_resigned_wrapped_key_flip_fails_to_unseal(index: int, position: int, mask: int) -> None:
    envelope = copy.deepcopy(BASE)
    entry = envelope["wrapped_keys"][index % len(envelope["wrapped_keys"])]
    data = bytearray(b64url_decode(entry["wrapped_key"]))
    data[position] ^= mask
    set_wrapped_key(envelope, entry["field"], entry["recipient"], bytes(data))
    resign(envelope)
    check(envelope)
    with refused("decrypt-failed"):
        open_as(envelope, entry["recipient"])


@PROPERTY
@given(field=st.sampled_from(sorted(FIELDS)), position=st.integers(0, 31), mask=st.integers(1, 255))
def test_resigned_commitment_flip_is_refused(field: str, position: int, mask: int) -> None:
    envelope = copy.deepcopy(BASE)
    entry = envelope["manifest"]["fields"][field]
    data = bytearray(b64url_decode(entry["commitment"]))
    data[position] ^= mask
    entry["commitment"] = b64url_encode(bytes(data))
    resign(envelope)
    check(envelope)
    with refused("bad-commitment"):
        open_as(envelope, SENDER)


def relabel(
    envelope: dict[str, Any], source: dict[str, Any], source_field: str, field: str
) -> None:
    """Put ``source``'s ciphertext of ``source_field`` in ``envelope`` as ``field``, with every
    hash, commitment and wrapped key recomputed honestly for its real key: only the AAD
    still ties the ciphertext to where it came from."""
    referral_id = envelope["manifest"]["referral_id"]
    field_key = unwrap_as_sender(source, source_field)
    set_ciphertext(envelope, field, b64url_decode(source["ciphertexts"][source_field]))
    envelope["manifest"]["fields"][field]["commitment"] = b64url_encode(
        commit(field_key, referral_id, field)
    )
    for entry in envelope["wrapped_keys"]:
        if entry["field"] == field:
            public = KEYS[entry["recipient"]].enc_public
            set_wrapped_key(envelope, field, entry["recipient"], keys.seal(public, field_key))
    resign(envelope)


@pytest.mark.parametrize(
    ("source_field", "field"),
    [("narrative", "full_name"), ("safety_concerns", "full_name"), ("contact", "narrative")],
)
def test_a_ciphertext_moved_to_another_field_does_not_decrypt(
    source_field: str, field: str
) -> None:
    envelope = copy.deepcopy(BASE)
    relabel(envelope, BASE, source_field, field)
    check(envelope)
    reader = LEGAL if field in LEGAL_SEES else SENDER
    with refused("decrypt-failed"):
        open_as(envelope, reader)


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_a_ciphertext_moved_to_another_referral_does_not_decrypt(field: str) -> None:
    envelope = seal()
    relabel(envelope, BASE, field, field)
    check(envelope)
    assert envelope["manifest"]["referral_id"] != BASE["manifest"]["referral_id"]
    with refused("decrypt-failed"):
        open_as(envelope, SENDER)


def test_relabel_control_same_slot_same_referral_still_opens() -> None:
    # The attack helper itself is sound: relabelling a field onto itself changes nothing.
    envelope = copy.deepcopy(BASE)
    relabel(envelope, BASE, "narrative", "narrative")
    assert open_as(envelope, LEGAL) == {f: FIELDS[f] for f in LEGAL_SEES}


@pytest.mark.parametrize("commit_to", ["real key", "other key"])
def test_a_dishonest_sender_cannot_give_two_recipients_two_keys(commit_to: str) -> None:
    """Wrap another key for LEGAL than for SHELTER under one ciphertext and commitment.

    Whichever key the single commitment names, the recipient holding the other one refuses
    before decrypting, so no two recipients are ever shown different texts for one field.
    """
    envelope = copy.deepcopy(BASE)
    referral_id = envelope["manifest"]["referral_id"]
    real_key, other_key = unwrap_as_sender(envelope, "full_name"), bytes(range(32))
    set_wrapped_key(envelope, "full_name", LEGAL, keys.seal(KEYS[LEGAL].enc_public, other_key))
    committed = real_key if commit_to == "real key" else other_key
    envelope["manifest"]["fields"]["full_name"]["commitment"] = b64url_encode(
        commit(committed, referral_id, "full_name")
    )
    resign(envelope)
    check(envelope)  # the server cannot tell: it holds no key
    loser = LEGAL if commit_to == "real key" else SHELTER
    with refused("bad-commitment"):
        open_as(envelope, loser)


def test_a_wrapped_key_for_another_encryption_key_is_reported() -> None:
    envelope = copy.deepcopy(BASE)
    wrapped_of(envelope, "narrative", LEGAL)["kid"] = KEYS[POLICE].enc_kid
    grant_of(envelope, "narrative", LEGAL)["kid"] = KEYS[POLICE].enc_kid
    resign(envelope)
    check(envelope)
    with refused("kid-mismatch"):
        open_as(envelope, LEGAL)


def test_a_served_wrapped_key_without_its_ciphertext_is_refused_not_skipped() -> None:
    served = as_served_to(BASE, LEGAL)
    del served["ciphertexts"]["narrative"]
    with refused("malformed"):
        open_as(served, LEGAL)


def test_a_wrapped_key_with_no_grant_is_refused() -> None:
    served = as_served_to(BASE, LEGAL)
    entry = dict(served["wrapped_keys"][0], field="contact")
    served["wrapped_keys"] = [entry]
    with refused("consent-mismatch"):
        open_as(served, LEGAL)


def test_open_verifies_with_the_sender_key_it_is_given() -> None:
    with refused("kid-mismatch"):
        open_envelope(
            BASE,
            agency_id=LEGAL,
            enc_private=KEYS[LEGAL].enc_private,
            sender_sig_public=KEYS[SHELTER].sig_public,
        )


@PROPERTY
@given(data=st.data())
def test_arbitrary_structural_damage_only_ever_raises_envelope_error(data: st.DataObject) -> None:
    envelope = copy.deepcopy(BASE)
    node: Any = envelope
    while True:
        keys_or_indexes = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys_or_indexes:
            break
        step = data.draw(st.sampled_from(keys_or_indexes))
        child = node[step]
        if isinstance(child, dict | list) and child and data.draw(st.booleans()):
            node = child
            continue
        node[step] = data.draw(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats()
            | st.text(max_size=5)
            | st.lists(st.integers(), max_size=2)
            | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
        )
        break
    for attempt in (lambda: check(envelope), lambda: open_as(envelope, LEGAL)):
        try:
            attempt()
        except EnvelopeError:
            pass


# --------------------------------------------------------------------------
# widening consent later


def merged(envelope: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """What the server stores after accepting a grant update."""
    replaced = {(w["field"], w["recipient"]) for w in update["wrapped_keys"]}
    kept = [w for w in envelope["wrapped_keys"] if (w["field"], w["recipient"]) not in replaced]
    return {
        "manifest": update["manifest"],
        "signature": update["signature"],
        "ciphertexts": envelope["ciphertexts"],
        "wrapped_keys": kept + update["wrapped_keys"],
    }


def grant_more(envelope: dict[str, Any], *new: Consent) -> dict[str, Any]:
    return add_grants(
        as_served_to(envelope, SENDER),
        sender_agency=SENDER,
        sender_sig_seed=KEYS[SENDER].sig_seed,
        sender_enc_private=KEYS[SENDER].enc_private,
        consents=list(new),
    )


def check_update(update: dict[str, Any], old: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return check_grant_update(
        (old or BASE)["manifest"], update, sender_sig_public=KEYS[SENDER].sig_public
    )


def test_a_new_agency_can_be_granted_a_field_later() -> None:
    update = grant_more(BASE, consent("narrative", POLICE, "investigation"))
    assert set(update) == {"manifest", "signature", "wrapped_keys"}
    assert update["manifest"]["recipients"] == [SHELTER, LEGAL, POLICE]
    changed = check_update(update)
    assert [(g["field"], g["recipient"], g["purpose"]) for g in changed] == [
        ("narrative", POLICE, "investigation")
    ]
    assert [(w["field"], w["recipient"]) for w in update["wrapped_keys"]] == [("narrative", POLICE)]
    after = merged(BASE, update)
    check(after)
    assert open_as(after, POLICE) == {"narrative": FIELDS["narrative"]}
    assert open_as(after, LEGAL) == {f: FIELDS[f] for f in LEGAL_SEES}
    order = [(g["field"], g["recipient"]) for g in update["manifest"]["grants"]]
    assert order == sorted(order)


def test_regranting_replaces_the_old_grant() -> None:
    update = grant_more(BASE, consent("full_name", SHELTER, expires_at="2027-05-01T00:00:00Z"))
    assert update["manifest"]["recipients"] == [SHELTER, LEGAL]
    (changed,) = check_update(update)
    assert (changed["field"], changed["recipient"], changed["expires_at"]) == (
        "full_name",
        SHELTER,
        "2027-05-01T00:00:00Z",
    )
    after = merged(BASE, update)
    check(after)
    assert open_as(after, SHELTER) == {f: FIELDS[f] for f in SHELTER_SEES}


def _drop_recipient(m: dict[str, Any]) -> None:
    m["recipients"].remove(LEGAL)
    m["grants"] = [g for g in m["grants"] if g["recipient"] != LEGAL]


def _drop_grant(m: dict[str, Any]) -> None:
    m["grants"] = [g for g in m["grants"] if (g["field"], g["recipient"]) != ("narrative", LEGAL)]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda m: m["metadata"].update(urgency="routine"), "manifest-changed"),
        (lambda m: m.update(created_at="2026-11-20T10:00:01Z"), "manifest-changed"),
        (
            lambda m: m["fields"]["contact"].update(commitment=b64url_encode(bytes(32))),
            "manifest-changed",
        ),
        (_drop_recipient, "manifest-changed"),
        (_drop_grant, "manifest-changed"),
    ],
)
def test_a_grant_update_cannot_touch_anything_else(change: Any, code: str) -> None:
    update = grant_more(BASE, consent("narrative", POLICE, "investigation"))
    change(update["manifest"])
    resign(update)
    with refused(code):
        check_update(update)


def test_a_grant_update_needs_exactly_the_new_wrapped_keys() -> None:
    update = grant_more(BASE, consent("narrative", POLICE, "investigation"))
    missing = dict(update, wrapped_keys=[])
    with refused("consent-mismatch"):
        check_update(missing)
    extra = dict(update, wrapped_keys=update["wrapped_keys"] + [BASE["wrapped_keys"][0]])
    with refused("consent-mismatch"):
        check_update(extra)
    with refused("malformed"):
        check_update({**update, "ciphertexts": {}})
    with refused("bad-signature"):
        check_update(dict(update, signature=BASE["signature"]))


def test_a_grant_update_that_changes_nothing_is_refused() -> None:
    with refused("malformed"):
        check_update({k: BASE[k] for k in ("manifest", "signature")} | {"wrapped_keys": []})


@pytest.mark.parametrize(
    ("new", "code"),
    [
        (consent("medical_needs", POLICE), "consent-mismatch"),
        (consent("narrative", POLICE, "curiosity"), "invalid-consent"),
        (
            Consent(
                "narrative",
                SENDER,
                KEYS[SENDER].enc_kid,
                KEYS[SENDER].enc_public,
                "investigation",
                EXPIRES,
            ),
            "invalid-recipient",
        ),
    ],
)
def test_add_grants_refuses(new: Consent, code: str) -> None:
    with refused(code):
        grant_more(BASE, new)


def test_add_grants_refuses_a_referral_the_server_altered() -> None:
    altered = copy.deepcopy(BASE)
    altered["manifest"]["metadata"]["urgency"] = "routine"
    with refused("bad-signature"):
        grant_more(altered, consent("narrative", POLICE))


def test_add_grants_refuses_a_sender_copy_that_does_not_match_the_commitment() -> None:
    envelope = copy.deepcopy(BASE)
    set_wrapped_key(envelope, "narrative", SENDER, keys.seal(KEYS[SENDER].enc_public, bytes(32)))
    resign(envelope)
    with refused("bad-commitment"):
        grant_more(envelope, consent("narrative", POLICE))


def test_add_grants_refuses_nothing_to_add() -> None:
    with refused("malformed"):
        grant_more(BASE)


# --------------------------------------------------------------------------
# status notes


def test_a_note_round_trips_to_the_sender_only() -> None:
    note = seal_note("Accepted; intake Tuesday 10:00 ✔", KEYS[SENDER].enc_public)
    assert open_note(note, KEYS[SENDER].enc_private) == "Accepted; intake Tuesday 10:00 ✔"
    with refused("decrypt-failed"):
        open_note(note, KEYS[LEGAL].enc_private)
    with refused("bad-encoding"):
        open_note(note + "=", KEYS[SENDER].enc_private)
    with refused("decrypt-failed"):
        open_note(flip(note, 60, 1), KEYS[SENDER].enc_private)


# --------------------------------------------------------------------------
# keys


def test_kid_is_base64url_of_the_first_16_bytes_of_sha256() -> None:
    public = KEYS[SHELTER].enc_public
    assert keys.kid(public) == b64url_encode(hashlib.sha256(public).digest()[:16])
    assert len(keys.kid(public)) == 22


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), "x" * 32])
def test_keys_of_the_wrong_length_are_refused_clearly(bad: Any) -> None:
    for call in (
        lambda: keys.kid(bad),
        lambda: keys.sign(bad, b"m"),
        lambda: keys.verify(bad, b"m", bytes(64)),
        lambda: keys.seal(bad, b"m"),
        lambda: keys.unseal(bad, bytes(48)),
        lambda: keys.enc_public_from_private(bad),
        lambda: keys.sig_public_from_seed(bad),
    ):
        with pytest.raises(keys.InvalidKeyError, match="32 bytes|must be bytes"):
            call()


def test_private_keys_stay_out_of_repr() -> None:
    agency = KEYS[SHELTER]
    assert agency.enc_private.hex() not in repr(agency)
    assert repr(agency.sig_seed) not in repr(agency)


# --------------------------------------------------------------------------
# the known-answer vector, recomputed with independent primitives


def _hchacha20(key: bytes, nonce16: bytes) -> bytes:
    def rotl(v: int, n: int) -> int:
        return ((v << n) & 0xFFFFFFFF) | (v >> (32 - n))

    def quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = rotl(s[b] ^ s[c], 7)

    state = [*struct.unpack("<4I", b"expand 32-byte k"), *struct.unpack("<8I", key)]
    state += struct.unpack("<4I", nonce16)
    for _ in range(10):
        quarter(state, 0, 4, 8, 12)
        quarter(state, 1, 5, 9, 13)
        quarter(state, 2, 6, 10, 14)
        quarter(state, 3, 7, 11, 15)
        quarter(state, 0, 5, 10, 15)
        quarter(state, 1, 6, 11, 12)
        quarter(state, 2, 7, 8, 13)
        quarter(state, 3, 4, 9, 14)
    return struct.pack("<8I", *state[0:4], *state[12:16])


def xchacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """draft-irtf-cfrg-xchacha: HChaCha20 subkey, then IETF ChaCha20-Poly1305."""
    subkey = _hchacha20(key, nonce[:16])
    return ChaCha20Poly1305(subkey).encrypt(b"\x00" * 4 + nonce[16:], plaintext, aad)


def test_hchacha20_matches_the_draft_test_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert _hchacha20(key, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


VEC: dict[str, Any] = json.loads(VECTOR.read_text(encoding="utf-8"))


def test_vector_agency_keys_and_kids() -> None:
    for agency in VEC["agencies"].values():
        enc_private = bytes.fromhex(agency["enc_private_hex"])
        sig_seed = bytes.fromhex(agency["sig_seed_hex"])
        enc_public = (
            X25519PrivateKey.from_private_bytes(enc_private).public_key().public_bytes_raw()
        )
        sig_public = Ed25519PrivateKey.from_private_bytes(sig_seed).public_key().public_bytes_raw()
        assert enc_public.hex() == agency["enc_public_hex"]
        assert b64url_encode(enc_public) == agency["enc_public"]
        assert sig_public.hex() == agency["sig_public_hex"]
        assert b64url_encode(sig_public) == agency["sig_public"]
        assert agency["enc_kid"] == b64url_encode(hashlib.sha256(enc_public).digest()[:16])
        assert agency["sig_kid"] == b64url_encode(hashlib.sha256(sig_public).digest()[:16])
        assert keys.AgencyKeys.from_private(enc_private, sig_seed).enc_kid == agency["enc_kid"]


def test_vector_field_ciphertexts_commitments_and_hashes() -> None:
    referral_id = VEC["referral_id"]
    envelope = VEC["envelope"]
    for name, field in VEC["fields"].items():
        key, nonce = bytes.fromhex(field["key_hex"]), bytes.fromhex(field["nonce_hex"])
        plaintext = field["plaintext"].encode("utf-8")
        assert plaintext.hex() == field["plaintext_utf8_hex"]
        assert field["aad"] == f"refgate/v1|{referral_id}|{name}"
        assert field["commitment_input"] == f"refgate/v1/commit|{referral_id}|{name}"
        blob = nonce + xchacha20poly1305_encrypt(key, nonce, plaintext, field["aad"].encode())
        assert blob.hex() == field["ciphertext_hex"]
        assert b64url_encode(blob) == field["ciphertext"] == envelope["ciphertexts"][name]
        digest = hashlib.sha256(blob).digest()
        assert digest.hex() == field["ciphertext_sha256_hex"]
        assert b64url_encode(digest) == field["ciphertext_sha256"]
        commitment = hashlib.blake2b(
            field["commitment_input"].encode(), key=key, digest_size=32
        ).digest()
        assert commitment.hex() == field["commitment_hex"]
        assert b64url_encode(commitment) == field["commitment"]
        assert envelope["manifest"]["fields"][name] == {
            "ciphertext_sha256": field["ciphertext_sha256"],
            "commitment": field["commitment"],
        }


def test_vector_wrapped_keys_hash_to_their_grants_and_carry_the_field_keys() -> None:
    envelope = VEC["envelope"]
    by_id = {a["id"]: a for a in VEC["agencies"].values()}
    for entry in envelope["wrapped_keys"]:
        data = b64url_decode(entry["wrapped_key"], length=80)
        grant = grant_of(envelope, entry["field"], entry["recipient"])
        assert grant["kid"] == entry["kid"] == by_id[entry["recipient"]]["enc_kid"]
        assert grant["wrapped_key_sha256"] == b64url_encode(hashlib.sha256(data).digest())
        private = bytes.fromhex(by_id[entry["recipient"]]["enc_private_hex"])
        assert keys.unseal(private, data).hex() == VEC["fields"][entry["field"]]["key_hex"]


def test_vector_manifest_bytes_and_signature() -> None:
    envelope = VEC["envelope"]
    canonical = VEC["manifest_canonical"].encode("utf-8")
    assert canonical_json(envelope["manifest"]) == canonical
    assert json.loads(canonical) == envelope["manifest"]
    assert hashlib.sha256(canonical).hexdigest() == VEC["manifest_canonical_sha256_hex"]
    signing_input = b"refgate/v1/manifest\n" + canonical
    assert hashlib.sha256(signing_input).hexdigest() == VEC["signing_input_sha256_hex"]
    sender = VEC["agencies"]["sender"]
    signer = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sender["sig_seed_hex"]))
    signature = signer.sign(signing_input)  # Ed25519 is deterministic (RFC 8032)
    assert signature.hex() == VEC["signature_hex"]
    assert b64url_encode(signature) == VEC["signature"] == envelope["signature"]
    assert envelope["manifest"]["sender_kid"] == sender["sig_kid"]


def test_vector_opens_as_each_agency_and_passes_the_server_check() -> None:
    envelope = VEC["envelope"]
    sender_sig_public = bytes.fromhex(VEC["agencies"]["sender"]["sig_public_hex"])
    check_envelope(envelope, sender_sig_public=sender_sig_public)
    for role, expected in VEC["opened"].items():
        agency = VEC["agencies"][role]
        for served in (envelope, as_served_to(envelope, agency["id"])):
            opened = open_envelope(
                served,
                agency_id=agency["id"],
                enc_private=bytes.fromhex(agency["enc_private_hex"]),
                sender_sig_public=sender_sig_public,
            )
            assert opened == expected
    assert VEC["opened"]["sender"] == {n: f["plaintext"] for n, f in VEC["fields"].items()}


def test_seal_envelope_reproduces_the_vector_except_the_randomized_sealed_boxes() -> None:
    agencies = VEC["agencies"]
    by_id = {a["id"]: a for a in agencies.values()}
    sender = agencies["sender"]
    consents = [
        Consent(
            c["field"],
            c["recipient"],
            by_id[c["recipient"]]["enc_kid"],
            bytes.fromhex(by_id[c["recipient"]]["enc_public_hex"]),
            c["purpose"],
            c["expires_at"],
            c["release_ref"],
        )
        for c in VEC["consents"]
    ]
    body = seal_envelope(
        referral_id=VEC["referral_id"],
        sender_agency=sender["id"],
        sender_sig_seed=bytes.fromhex(sender["sig_seed_hex"]),
        sender_enc_public=bytes.fromhex(sender["enc_public_hex"]),
        recipients=VEC["envelope"]["manifest"]["recipients"],
        fields={n: f["plaintext"] for n, f in VEC["fields"].items()},
        consents=consents,
        metadata=VEC["metadata"],
        created_at=VEC["created_at"],
        unsafe_field_keys={n: bytes.fromhex(f["key_hex"]) for n, f in VEC["fields"].items()},
        unsafe_nonces={n: bytes.fromhex(f["nonce_hex"]) for n, f in VEC["fields"].items()},
    )
    assert body["ciphertexts"] == VEC["envelope"]["ciphertexts"]
    expected = VEC["envelope"]["manifest"]

    def without_wrapped_hashes(manifest: dict[str, Any]) -> dict[str, Any]:
        grants = [
            {k: v for k, v in g.items() if k != "wrapped_key_sha256"} for g in manifest["grants"]
        ]
        return manifest | {"grants": grants}

    assert without_wrapped_hashes(body["manifest"]) == without_wrapped_hashes(expected)
    assert [(w["field"], w["recipient"], w["kid"]) for w in body["wrapped_keys"]] == [
        (w["field"], w["recipient"], w["kid"]) for w in VEC["envelope"]["wrapped_keys"]
    ]
