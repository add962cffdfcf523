"""The envelope v2 known-answer vector, recomputed with independent primitives.

Everything deterministic in ``tests/vectors/envelope_v2.json`` is recomputed
here without PyNaCl and without our canonicalizer: hashlib (SHA-256, keyed
BLAKE2b), the ``cryptography`` package (X25519, Ed25519, ChaCha20-Poly1305,
Poly1305) with HChaCha20 and Salsa20 written out below, and the standard
library's JSON encoder, which gives the RFC 8785 bytes for these values (ASCII
member names, no floats). The recorded sealed boxes are opened the same way,
so the file checks the format, not our code against itself. Then the body goes
through ``check_envelope`` and opens for each agency with the recorded keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.poly1305 import Poly1305

from app.crypto.envelope import (
    Grant,
    Request,
    check_envelope,
    open_envelope,
    seal_envelope,
    verify_status,
)
from app.crypto.wire import EnvelopeIn

VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "envelope_v2.json"
VEC: dict[str, Any] = json.loads(VECTOR.read_text(encoding="utf-8"))
AGENCIES: dict[str, dict[str, str]] = VEC["agencies"]
BY_ID = {a["id"]: role for role, a in AGENCIES.items()}
SENDER = AGENCIES["sender"]


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: str) -> bytes:
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    assert b64u(data) == text
    return data


def jcs(value: object) -> bytes:
    """RFC 8785 for values without floats whose member names are ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _rotl(v: int, n: int) -> int:
    return ((v << n) & 0xFFFFFFFF) | (v >> (32 - n))


def _hchacha20(key: bytes, nonce16: bytes) -> bytes:
    def quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = _rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = _rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = _rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = _rotl(s[b] ^ s[c], 7)

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


def _salsa20_rounds(key: bytes, input16: bytes) -> tuple[list[int], list[int]]:
    c = struct.unpack("<4I", b"expand 32-byte k")
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", input16)
    start = [c[0], *k[0:4], c[1], *n, c[2], *k[4:8], c[3]]
    x = list(start)

    def quarter(a: int, b: int, cc: int, d: int) -> None:
        x[b] ^= _rotl((x[a] + x[d]) & 0xFFFFFFFF, 7)
        x[cc] ^= _rotl((x[b] + x[a]) & 0xFFFFFFFF, 9)
        x[d] ^= _rotl((x[cc] + x[b]) & 0xFFFFFFFF, 13)
        x[a] ^= _rotl((x[d] + x[cc]) & 0xFFFFFFFF, 18)

    for _ in range(10):
        quarter(0, 4, 8, 12)
        quarter(5, 9, 13, 1)
        quarter(10, 14, 2, 6)
        quarter(15, 3, 7, 11)
        quarter(0, 1, 2, 3)
        quarter(5, 6, 7, 4)
        quarter(10, 11, 8, 9)
        quarter(15, 12, 13, 14)
    return start, x


def _hsalsa20(key: bytes, input16: bytes) -> bytes:
    _, x = _salsa20_rounds(key, input16)
    return struct.pack("<8I", *(x[i] for i in (0, 5, 10, 15, 6, 7, 8, 9)))


def _salsa20_stream(key: bytes, nonce8: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        start, x = _salsa20_rounds(key, nonce8 + struct.pack("<Q", counter))
        out += struct.pack("<16I", *((a + b) & 0xFFFFFFFF for a, b in zip(start, x, strict=True)))
        counter += 1
    return out[:length]


def open_sealed_box(private: bytes, sealed: bytes) -> bytes:
    """libsodium crypto_box_seal_open: X25519, HSalsa20, XSalsa20-Poly1305, BLAKE2b nonce."""
    sk = X25519PrivateKey.from_private_bytes(private)
    pk = sk.public_key().public_bytes_raw()
    epk, mac, ciphertext = sealed[:32], sealed[32:48], sealed[48:]
    nonce = hashlib.blake2b(epk + pk, digest_size=24).digest()
    shared = sk.exchange(X25519PublicKey.from_public_bytes(epk))
    box_key = _hsalsa20(shared, bytes(16))
    stream = _salsa20_stream(_hsalsa20(box_key, nonce[:16]), nonce[16:], 32 + len(ciphertext))
    Poly1305.verify_tag(stream[:32], ciphertext, mac)
    return bytes(a ^ b for a, b in zip(ciphertext, stream[32:], strict=True))


# --------------------------------------------------------------------------
# the hand-written primitives against published answers


def test_hchacha20_matches_the_draft_test_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert _hchacha20(bytes(range(32)), nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


def test_xchacha20poly1305_matches_the_draft_test_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, appendix A.3.1
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it."
    )
    out = xchacha20poly1305_encrypt(
        bytes(range(0x80, 0xA0)), bytes(range(0x40, 0x58)), plaintext,
        bytes.fromhex("50515253c0c1c2c3c4c5c6c7"),
    )
    assert out[-16:].hex() == "c0875924c1c7987947deafd8780acf49"
    assert out[:16].hex() == "bd6d179d3e83d43b9576579493c0e939"


def test_hsalsa20_matches_the_nacl_test_vector() -> None:
    # NaCl tests/firstkey.c: HSalsa20 of the Alice/Bob X25519 shared secret
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert _hsalsa20(shared, bytes(16)).hex() == (
        "1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389"
    )


# --------------------------------------------------------------------------
# the vector


def test_agency_keys_and_kids() -> None:
    for a in AGENCIES.values():
        enc = X25519PrivateKey.from_private_bytes(bytes.fromhex(a["enc_private_hex"]))
        sig = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(a["sig_seed_hex"]))
        enc_public = enc.public_key().public_bytes_raw()
        sig_public = sig.public_key().public_bytes_raw()
        assert (enc_public.hex(), b64u(enc_public)) == (a["enc_public_hex"], a["enc_public"])
        assert (sig_public.hex(), b64u(sig_public)) == (a["sig_public_hex"], a["sig_public"])
        assert a["enc_kid"] == b64u(sha256(enc_public)[:16])
        assert a["sig_kid"] == b64u(sha256(sig_public)[:16])


def test_the_random_stream_and_the_order_it_is_drawn_in() -> None:
    draws = [bytes.fromhex(d) for d in VEC["random"]["draws_hex"]]
    label = VEC["random"]["label"].encode("ascii")
    stream = b"".join(sha256(label + i.to_bytes(4, "big")) for i in range(64))
    assert b"".join(draws) == stream[: sum(map(len, draws))]
    it = iter(draws)
    salts = []
    grants_per_field = {f["name"]: 1 for f in VEC["fields"]}
    for g in VEC["inputs"]["grants"]:
        grants_per_field[g["field"]] += 1
    for f in VEC["fields"]:
        assert next(it).hex() == f["fid_hex"]
        assert next(it).hex() == f["key_hex"]
        assert next(it).hex() == f["nonce_hex"]
        salts += [next(it) for _ in range(1 + grants_per_field[f["name"]])]
    salts += [next(it) for _ in VEC["inputs"]["requests"]]
    decoys = [b64u(d) for d in it]
    assert [unb64u(x["decoded"][0]) for x in VEC["disclosures"]] == salts
    assert sorted(decoys) == VEC["decoys"]


def test_each_field_ciphertext_commitment_and_hash() -> None:
    referral_id = VEC["referral_id"]
    body = VEC["body"]
    assert [f["name"] for f in VEC["fields"]] == list(VEC["inputs"]["fields"])
    for f in VEC["fields"]:
        fid, key, nonce = f["fid"], bytes.fromhex(f["key_hex"]), bytes.fromhex(f["nonce_hex"])
        assert b64u(bytes.fromhex(f["fid_hex"])) == fid
        assert f["value"] == VEC["inputs"]["fields"][f["name"]]
        plaintext = jcs({"name": f["name"], "value": f["value"]})
        assert plaintext == f["plaintext"].encode() == bytes.fromhex(f["plaintext_hex"])
        assert f["aad"] == f"refgate/v2|{referral_id}|{fid}"
        blob = nonce + xchacha20poly1305_encrypt(key, nonce, plaintext, f["aad"].encode())
        assert blob.hex() == f["ciphertext_hex"]
        assert b64u(blob) == f["ciphertext"] == body["ciphertexts"][fid]
        assert sha256(blob).hex() == f["ciphertext_sha256_hex"]
        assert b64u(sha256(blob)) == f["ciphertext_sha256"]
        assert f["commitment_input"] == f"refgate/v2/commit|{referral_id}|{fid}"
        commitment = hashlib.blake2b(f["commitment_input"].encode(), key=key, digest_size=32)
        assert commitment.hexdigest() == f["commitment_hex"]
        assert b64u(commitment.digest()) == f["commitment"]
    assert set(body["ciphertexts"]) == {f["fid"] for f in VEC["fields"]}


def test_each_disclosure_its_json_and_digest() -> None:
    body = VEC["body"]
    assert [x["disclosure"] for x in VEC["disclosures"]] == body["disclosures"]
    fields = {f["fid"]: f for f in VEC["fields"]}
    wrapped = {(w["fid"], w["recipient"]): w for w in VEC["wrapped_keys"]}
    inputs = VEC["inputs"]
    ids = {role: a["id"] for role, a in AGENCIES.items()}
    names = {f["fid"]: f["name"] for f in VEC["fields"]}
    seen: dict[str, list[Any]] = {"field": [], "grant": [], "request": []}
    for x in VEC["disclosures"]:
        assert json.loads(x["json"]) == x["decoded"]
        assert jcs(x["decoded"]) == x["json"].encode() == unb64u(x["disclosure"])
        assert sha256(x["disclosure"].encode("ascii")).hex() == x["digest_hex"]
        assert b64u(sha256(x["disclosure"].encode("ascii"))) == x["digest"]
        salt, kind, value = x["decoded"]
        assert len(unb64u(salt)) == 16
        seen[kind].append(value)
        if kind == "field":
            f = fields[value["fid"]]
            assert value == {"fid": f["fid"], "ciphertext_sha256": f["ciphertext_sha256"],
                             "commitment": f["commitment"]}
        elif kind == "grant":
            w = wrapped[(value["fid"], value["recipient"])]
            assert value["kid"] == w["kid"] == AGENCIES[BY_ID[w["recipient"]]]["enc_kid"]
            assert value["wrapped_key_sha256"] == w["wrapped_key_sha256"]
            if value["recipient"] == SENDER["id"]:
                assert (value["purpose"], value["expires_at"], value["release_ref"]) == (
                    "sender", None, None)
            else:
                assert {"field": names[value["fid"]], "recipient": BY_ID[value["recipient"]],
                        "purpose": value["purpose"], "expires_at": value["expires_at"],
                        "release_ref": value["release_ref"]} in inputs["grants"]
    assert len(seen["field"]) == len(fields)
    assert len(seen["grant"]) == len(fields) + len(inputs["grants"]) == len(wrapped)
    assert seen["request"] == [r | {"recipient": ids[r["recipient"]]} for r in inputs["requests"]]


def test_the_wrapped_keys_open_to_the_field_keys_without_libsodium() -> None:
    body = VEC["body"]
    fields = {f["fid"]: f for f in VEC["fields"]}
    for w, entry in zip(VEC["wrapped_keys"], body["wrapped_keys"], strict=True):
        assert {k: w[k] for k in ("fid", "recipient", "kid", "wrapped_key")} == entry
        data = unb64u(w["wrapped_key"])
        assert len(data) == 80
        assert data.hex() == w["wrapped_key_hex"]
        assert b64u(sha256(data)) == w["wrapped_key_sha256"]
        private = bytes.fromhex(AGENCIES[BY_ID[w["recipient"]]]["enc_private_hex"])
        key = open_sealed_box(private, data)
        assert key.hex() == w["field_key_hex"] == fields[w["fid"]]["key_hex"]


def test_the_manifest_its_bytes_and_signature() -> None:
    manifest = VEC["manifest"]
    assert manifest == VEC["body"]["manifest"]
    assert set(manifest) == {"v", "referral_id", "sender_agency", "sender_kid", "created_at",
                             "version", "digests"}
    assert (manifest["v"], manifest["version"]) == (2, 1)
    assert manifest["referral_id"] == VEC["referral_id"]
    assert manifest["created_at"] == VEC["created_at"]
    assert manifest["sender_agency"] == SENDER["id"]
    assert manifest["sender_kid"] == SENDER["sig_kid"]
    digests = manifest["digests"]
    assert digests == sorted(set(digests))
    assert len(digests) % 8 == 0
    assert sorted([x["digest"] for x in VEC["disclosures"]] + VEC["decoys"]) == digests
    assert all(len(unb64u(d)) == 32 for d in digests)
    canonical = jcs(manifest)
    assert canonical == VEC["manifest_canonical"].encode()
    assert sha256(canonical).hex() == VEC["manifest_canonical_sha256_hex"]
    signing_input = b"refgate/v2/manifest\n" + canonical
    assert sha256(signing_input).hex() == VEC["signing_input_sha256_hex"]
    signer = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SENDER["sig_seed_hex"]))
    signature = signer.sign(signing_input)  # Ed25519 is deterministic (RFC 8032)
    assert signature.hex() == VEC["signature_hex"]
    assert b64u(signature) == VEC["signature"] == VEC["body"]["signature"]


def test_each_served_view_is_the_recipients_part() -> None:
    body = VEC["body"]
    by_digest = {x["disclosure"]: x["decoded"] for x in VEC["disclosures"]}
    for role, view in VEC["served"].items():
        me = AGENCIES[role]["id"]
        grants = {v[2]["fid"] for v in by_digest.values()
                  if v[1] == "grant" and v[2]["recipient"] == me}
        expected = [d for d, (_s, kind, value) in by_digest.items()
                    if (kind != "field" and value["recipient"] == me)
                    or (kind == "field" and value["fid"] in grants)]
        assert sorted(view["disclosures"]) == sorted(expected)
        assert (view["manifest"], view["signature"]) == (body["manifest"], body["signature"])
        assert view["ciphertexts"] == {f: c for f, c in body["ciphertexts"].items()
                                       if f in grants}
        assert view["wrapped_keys"] == [w for w in body["wrapped_keys"] if w["recipient"] == me]


def test_the_body_passes_the_server_check_and_opens_for_each_agency() -> None:
    body = VEC["body"]
    sender_sig_public = bytes.fromhex(SENDER["sig_public_hex"])
    checked = check_envelope(EnvelopeIn.model_validate(body, strict=True),
                             sender_sig_public=sender_sig_public)
    assert checked.manifest_bytes == VEC["manifest_canonical"].encode()
    for role, expected in VEC["opened"].items():
        a = AGENCIES[role]
        for view in (body, VEC["served"].get(role, body)):
            opened = open_envelope(
                view, agency_id=a["id"], enc_private=bytes.fromhex(a["enc_private_hex"]),
                sender_sig_public=sender_sig_public,
            )
            assert opened.fields == expected["fields"]
        assert {BY_ID[r]: v.model_dump() for r, v in opened.requests.items()} == (
            expected["requests"]
        )
    assert VEC["opened"]["sender"]["fields"] == VEC["inputs"]["fields"]


def test_the_signed_status_and_its_note() -> None:
    s = VEC["status"]
    inputs = s["inputs"]
    sender_private = bytes.fromhex(SENDER["enc_private_hex"])
    note = unb64u(s["note"])
    assert open_sealed_box(sender_private, note).decode("utf-8") == inputs["note"]
    assert s["note_sha256"] == b64u(sha256(note))
    assert s["signed_object"] == {
        "referral_id": VEC["referral_id"], "recipient": inputs["recipient"],
        "status": inputs["status"], "reason": inputs["reason"],
        "note_sha256": s["note_sha256"], "signed_at": inputs["signed_at"],
    }
    signing_input = b"refgate/v2/status\n" + jcs(s["signed_object"])
    assert signing_input == s["signing_input"].encode()
    assert sha256(signing_input).hex() == s["signing_input_sha256_hex"]
    signer = AGENCIES[BY_ID[inputs["recipient"]]]
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(signer["sig_seed_hex"]))
    assert key.sign(signing_input).hex() == s["signature_hex"]
    assert s["body"] == {"status": inputs["status"], "reason": inputs["reason"],
                         "note": s["note"], "signed_at": inputs["signed_at"],
                         "signature": b64u(bytes.fromhex(s["signature_hex"]))}
    verify_status(s["body"] | {"recipient": inputs["recipient"]},
                  referral_id=VEC["referral_id"],
                  sig_public=bytes.fromhex(signer["sig_public_hex"]))


def test_seal_envelope_reproduces_the_vector_but_for_the_sealed_boxes() -> None:
    draws = iter(bytes.fromhex(d) for d in VEC["random"]["draws_hex"])

    def replay(n: int) -> bytes:
        out = next(draws)
        assert len(out) == n
        return out

    ids = {role: a["id"] for role, a in AGENCIES.items()}
    sealed = seal_envelope(
        referral_id=VEC["referral_id"],
        sender_agency=SENDER["id"],
        sender_sig_seed=bytes.fromhex(SENDER["sig_seed_hex"]),
        sender_enc_public=bytes.fromhex(SENDER["enc_public_hex"]),
        fields=VEC["inputs"]["fields"],
        grants=[Grant(g["field"], ids[g["recipient"]],
                      bytes.fromhex(AGENCIES[g["recipient"]]["enc_public_hex"]), g["purpose"],
                      g["expires_at"], g["release_ref"]) for g in VEC["inputs"]["grants"]],
        requests=[Request(ids[r["recipient"]], tuple(r["services"]), r["urgency"], r["case_ref"])
                  for r in VEC["inputs"]["requests"]],
        created_at=VEC["created_at"],
        unsafe_random=replay,
    )
    body = sealed.body
    assert sealed.fids == {f["name"]: f["fid"] for f in VEC["fields"]}
    assert body["ciphertexts"] == VEC["body"]["ciphertexts"]

    def without_wrapping(disclosure: str) -> list[Any]:
        salt, kind, value = json.loads(unb64u(disclosure))
        return [salt, kind, {k: v for k, v in value.items() if k != "wrapped_key_sha256"}]

    assert [without_wrapping(d) for d in body["disclosures"]] == [
        without_wrapping(d) for d in VEC["body"]["disclosures"]
    ]
    same = [d for d, x in zip(body["disclosures"], VEC["disclosures"], strict=True)
            if x["decoded"][1] != "grant"]
    assert same == [x["disclosure"] for x in VEC["disclosures"] if x["decoded"][1] != "grant"]
    assert set(VEC["decoys"]) <= set(body["manifest"]["digests"])
    assert [{k: w[k] for k in ("fid", "recipient", "kid")} for w in body["wrapped_keys"]] == [
        {k: w[k] for k in ("fid", "recipient", "kid")} for w in VEC["body"]["wrapped_keys"]
    ]

