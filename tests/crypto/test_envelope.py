"""Envelope v2: round trips, every refusal, amendments, tampering, signed statuses.

Values are recomputed where it matters with primitives independent of PyNaCl
(hashlib for SHA-256 and keyed BLAKE2b); the known-answer vector and its
independent recomputation are in ``test_vectors_v2.py``. Attacks that need the
sender's signing key (a dishonest sender, or a test standing in for one) are
re-signed, so that only the check under test can catch them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Literal

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.crypto import keys
from app.crypto.canonical import canonical_json
from app.crypto.encoding import b64url_decode, b64url_encode
from app.crypto.envelope import (
    ERROR_CODES,
    STANDARD_FIELDS,
    EnvelopeError,
    Grant,
    Limits,
    Opened,
    Request,
    amend,
    check_amendment,
    check_envelope,
    disclosure_digest,
    make_disclosure,
    manifest_signing_input,
    open_envelope,
    open_note,
    parse_disclosure,
    seal_envelope,
    seal_note,
    sign_status,
    status_signing_input,
    verify_status,
)
from app.crypto.wire import FIELD_NAME_RE, Amendment, EnvelopeIn, Manifest

Kind = Literal["field", "grant", "request"]
PROPERTY = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SENDER, SHELTER, LEGAL, POLICE = (str(uuid.uuid4()) for _ in range(4))
KEYS = {a: keys.generate_agency_keys() for a in (SENDER, SHELTER, LEGAL, POLICE)}
CREATED = "2026-11-20T10:00:00Z"
EXPIRES = "2027-02-18T10:00:00Z"
FIELDS = {
    "full_name": "Ana Pérez",
    "date_of_birth": "1994-03-07",
    "narrative": "Recruited online; documents withheld.",
    "immigration_status": "T-visa applicant",
    "safety_concerns": "Do not call after 6pm.",
}
SHELTER_SEES = {"full_name", "safety_concerns"}
LEGAL_SEES = {"full_name", "narrative", "immigration_status"}


def grant(field: str, recipient: str, purpose: str = "service_provision", **kw: Any) -> Grant:
    params: dict[str, Any] = {"expires_at": EXPIRES, "release_ref": None} | kw
    return Grant(field, recipient, KEYS[recipient].enc_public, purpose, **params)


def request(recipient: str, *services: str, urgency: str = "urgent") -> Request:
    return Request(recipient, services or ("shelter",), urgency, "C-1")


GRANTS = [
    grant("full_name", SHELTER, "safety_planning"),
    grant("safety_concerns", SHELTER, "safety_planning"),
    grant("full_name", LEGAL, release_ref="sha256:release-form-1"),
    grant("narrative", LEGAL),
    grant("immigration_status", LEGAL),
]
REQUESTS = [request(SHELTER, "shelter", "safety_planning"), request(LEGAL, "legal")]


def seal(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "referral_id": str(uuid.uuid4()),
        "sender_agency": SENDER,
        "sender_sig_seed": KEYS[SENDER].sig_seed,
        "sender_enc_public": KEYS[SENDER].enc_public,
        "fields": FIELDS,
        "grants": GRANTS,
        "requests": REQUESTS,
        "created_at": CREATED,
    } | overrides
    return seal_envelope(**params).body


def check(body: dict[str, Any], **kw: Any) -> Any:
    model = EnvelopeIn.model_validate(json.loads(json.dumps(body)), strict=True)
    return check_envelope(model, sender_sig_public=KEYS[SENDER].sig_public, **kw)


def open_as(document: dict[str, Any], agency: str) -> Opened:
    return open_envelope(
        document,
        agency_id=agency,
        enc_private=KEYS[agency].enc_private,
        sender_sig_public=KEYS[SENDER].sig_public,
    )


def refused(code: str) -> Any:
    assert code in ERROR_CODES
    return pytest.raises(EnvelopeError, match=f"^{code}: ")


def decoded(disclosure: str) -> list[Any]:
    value: list[Any] = json.loads(b64url_decode(disclosure))
    return value


def served_to(
    body: dict[str, Any], agency: str, *, now: str = CREATED,
    revoked: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """What GET /v1/referrals/{id} answers a recipient (DESIGN.md, "Envelope v2").

    The manifest and signature, its request disclosure, its active grant
    disclosures (not revoked, not expired at ``now``), those fields'
    disclosures and ciphertexts, its wrapped keys of those fields, and a status.
    """
    gone = set(revoked)
    active: set[str] = set()
    requests, grants, fields = [], [], {}
    for d in body["disclosures"]:
        _salt, kind, value = decoded(d)
        if kind == "request" and value["recipient"] == agency:
            requests.append(d)
        elif kind == "grant" and value["recipient"] == agency:
            expired = value["expires_at"] is not None and value["expires_at"] <= now
            if not expired and (value["fid"], agency) not in gone:
                grants.append(d)
                active.add(value["fid"])
        elif kind == "field":
            fields[value["fid"]] = d
    return {
        "manifest": body["manifest"],
        "signature": body["signature"],
        "disclosures": requests + grants + [fields[f] for f in sorted(active)],
        "ciphertexts": {f: c for f, c in body["ciphertexts"].items() if f in active},
        "wrapped_keys": [
            w for w in body["wrapped_keys"] if w["recipient"] == agency and w["fid"] in active
        ],
        "statuses": [{"recipient": agency, "status": "requested", "reason": None, "note": None,
                      "signed_at": None, "signature": None, "updated_at": CREATED}],
    }


def resign(body: dict[str, Any], seed: bytes | None = None) -> dict[str, Any]:
    """Sign the manifest again, as the holder of the sender's signing key would."""
    message = manifest_signing_input(body["manifest"])
    body["signature"] = b64url_encode(keys.sign(seed or KEYS[SENDER].sig_seed, message))
    return body


def repad(body: dict[str, Any], *, extra: Iterable[str] = (), omit: Iterable[str] = ()) -> None:
    """Digests of the body's disclosures (plus ``extra``, minus ``omit``), decoys to 8k; re-sign."""
    digests = {disclosure_digest(d) for d in body["disclosures"]} | set(extra)
    digests -= set(omit)
    while len(digests) < 8 or len(digests) % 8:
        digests.add(b64url_encode(hashlib.sha256(str(len(digests)).encode()).digest()))
    body["manifest"]["digests"] = sorted(digests)
    resign(body)


def find(body: dict[str, Any], kind: str, **match: str) -> int:
    """Index of the one disclosure of ``kind`` whose value has the members ``match``."""
    (index,) = [
        i for i, d in enumerate(body["disclosures"])
        if decoded(d)[1] == kind and all(decoded(d)[2].get(k) == v for k, v in match.items())
    ]
    return index


def edit(body: dict[str, Any], index: int, change: Callable[[list[Any]], Any]) -> None:
    """Rewrite disclosure ``index`` (``change`` edits its decoded array), re-pad and re-sign."""
    array = decoded(body["disclosures"][index])
    change(array)
    body["disclosures"][index] = b64url_encode(canonical_json(array))
    repad(body)


def fid_of(body: dict[str, Any], name: str) -> str:
    return open_as(body, SENDER).fids[name]


def wrapped_index(body: dict[str, Any], fid: str, recipient: str) -> int:
    (index,) = [
        i for i, w in enumerate(body["wrapped_keys"])
        if (w["fid"], w["recipient"]) == (fid, recipient)
    ]
    return index


def flip(data: bytes, position: int, mask: int) -> bytes:
    out = bytearray(data)
    out[position % len(out)] ^= mask
    return bytes(out)


def flip_b64(text: str, position: int, mask: int) -> str:
    return b64url_encode(flip(b64url_decode(text), position, mask))


BASE = seal()
FID = {name: fid_of(BASE, name) for name in FIELDS}


def fresh() -> dict[str, Any]:
    return copy.deepcopy(BASE)


# --------------------------------------------------------------------------
# round trips


def test_each_recipient_opens_exactly_its_consented_fields() -> None:
    check(BASE)
    assert open_as(BASE, SHELTER).fields == {f: FIELDS[f] for f in SHELTER_SEES}
    assert open_as(BASE, LEGAL).fields == {f: FIELDS[f] for f in LEGAL_SEES}


def test_the_sender_opens_every_field_and_every_request() -> None:
    opened = open_as(BASE, SENDER)
    assert opened.fields == FIELDS
    assert set(opened.requests) == {SHELTER, LEGAL}
    assert opened.requests[SHELTER].services == ["shelter", "safety_planning"]
    own = [g for g in opened.grants if g.recipient == SENDER]
    assert {g.fid for g in own} == set(FID.values())
    assert all(
        (g.purpose, g.expires_at, g.release_ref, g.kid) == ("sender", None, None,
                                                             KEYS[SENDER].enc_kid)
        for g in own
    )
    for fid, key in opened.field_keys.items():
        assert len(key) == 32
        assert commit(key, BASE["manifest"]["referral_id"], fid) == field_value(BASE, fid)[
            "commitment"
        ]


def test_a_recipient_served_only_its_own_part_opens_it() -> None:
    for agency, sees in ((SHELTER, SHELTER_SEES), (LEGAL, LEGAL_SEES)):
        view = served_to(BASE, agency)
        opened = open_as(view, agency)
        assert opened.fields == {f: FIELDS[f] for f in sees}
        assert set(opened.requests) == {agency}
        assert {g.recipient for g in opened.grants} == {agency}
        assert len(view["disclosures"]) == 1 + 2 * len(sees)


def test_a_recipient_learns_nothing_of_other_fields_or_recipients() -> None:
    view = served_to(BASE, SHELTER)
    text = json.dumps(view) + "".join(b64url_decode(d).decode() for d in view["disclosures"])
    assert LEGAL not in text
    assert FID["immigration_status"] not in text
    assert FID["narrative"] not in text
    assert len(view["manifest"]["digests"]) % 8 == 0


def test_the_server_never_sees_a_field_name_or_value() -> None:
    body = json.dumps(BASE) + "".join(b64url_decode(d).decode() for d in BASE["disclosures"])
    for name, value in FIELDS.items():
        assert name not in body
        assert value not in body


def test_expired_and_revoked_grants_are_not_served_and_what_remains_opens() -> None:
    later = served_to(BASE, LEGAL, now=EXPIRES)
    assert open_as(later, LEGAL).fields == {}
    revoked = served_to(BASE, LEGAL, revoked=[(FID["narrative"], LEGAL)])
    assert open_as(revoked, LEGAL).fields == {
        f: FIELDS[f] for f in LEGAL_SEES - {"narrative"}
    }


def test_an_agency_with_no_grant_opens_nothing() -> None:
    opened = open_as(BASE, POLICE)
    assert opened.fields == {}
    assert opened.field_keys == {}


def test_body_shape_and_manifest_padding() -> None:
    assert set(BASE) == {"manifest", "signature", "disclosures", "ciphertexts", "wrapped_keys"}
    m = BASE["manifest"]
    assert set(m) == {"v", "referral_id", "sender_agency", "sender_kid", "created_at",
                      "version", "digests"}
    assert (m["v"], m["version"], m["sender_kid"]) == (2, 1, KEYS[SENDER].sig_kid)
    digests = m["digests"]
    assert digests == sorted(set(digests))
    assert len(digests) % 8 == 0
    assert len(digests) >= 8
    assert {disclosure_digest(d) for d in BASE["disclosures"]} <= set(digests)
    kinds = [decoded(d)[1] for d in BASE["disclosures"]]
    assert kinds.count("field") == len(FIELDS)
    assert kinds.count("grant") == len(FIELDS) + len(GRANTS) == len(BASE["wrapped_keys"])
    assert kinds.count("request") == len(REQUESTS)


def test_disclosures_are_sd_jwt_encoded_and_hashed_over_the_string() -> None:
    for d in BASE["disclosures"]:
        salt, kind, value = decoded(d)
        assert len(b64url_decode(salt)) == 16
        assert b64url_decode(d) == canonical_json([salt, kind, value])
        assert disclosure_digest(d) == b64url_encode(hashlib.sha256(d.encode("ascii")).digest())
        parsed = parse_disclosure(d)
        assert (parsed.kind, parsed.value.model_dump()) == (kind, value)
    assert make_disclosure(bytes(16), "request", {"a": 1}) == b64url_encode(
        b'["AAAAAAAAAAAAAAAAAAAAAA","request",{"a":1}]'
    )


def test_hashes_and_commitments_match_independent_recomputation() -> None:
    referral_id = BASE["manifest"]["referral_id"]
    key = open_as(BASE, SENDER).field_keys
    for fid, text in BASE["ciphertexts"].items():
        value = field_value(BASE, fid)
        blob = b64url_decode(text)
        assert value["ciphertext_sha256"] == b64url_encode(hashlib.sha256(blob).digest())
        assert value["commitment"] == commit(key[fid], referral_id, fid)
    for w in BASE["wrapped_keys"]:
        g = decoded(BASE["disclosures"][find(BASE, "grant", fid=w["fid"],
                                             recipient=w["recipient"])])[2]
        data = b64url_decode(w["wrapped_key"])
        assert len(data) == 80
        assert g["wrapped_key_sha256"] == b64url_encode(hashlib.sha256(data).digest())
        assert g["kid"] == w["kid"] == KEYS[w["recipient"]].enc_kid


def test_the_signature_is_over_the_prefixed_canonical_manifest() -> None:
    message = manifest_signing_input(BASE["manifest"])
    assert message == b"refgate/v2/manifest\n" + canonical_json(BASE["manifest"])
    assert keys.verify(KEYS[SENDER].sig_public, message, b64url_decode(BASE["signature"]))


def test_fresh_fids_keys_nonces_and_salts_every_time() -> None:
    again = seal(referral_id=BASE["manifest"]["referral_id"])
    assert not set(again["ciphertexts"]) & set(BASE["ciphertexts"])
    assert not set(again["manifest"]["digests"]) & set(BASE["manifest"]["digests"])
    nonces = {b64url_decode(c)[:24] for c in [*again["ciphertexts"].values(),
                                              *BASE["ciphertexts"].values()]}
    assert len(nonces) == 2 * len(FIELDS)


def test_fractional_seconds_and_a_single_recipient_are_accepted() -> None:
    body = seal(created_at="2026-11-20T10:00:00.123456789Z", grants=GRANTS[:1],
                requests=REQUESTS[:1])
    check(body)
    assert open_as(body, SHELTER).fields == {"full_name": FIELDS["full_name"]}


def test_public_constants() -> None:
    assert all(re.fullmatch(FIELD_NAME_RE, name) for name in STANDARD_FIELDS)
    assert re.fullmatch(FIELD_NAME_RE, "name\n") is None
    with pytest.raises(ValueError, match="unknown envelope error code"):
        EnvelopeError("made-up", "x")


def commit(key: bytes, referral_id: str, fid: str) -> str:
    message = f"refgate/v2/commit|{referral_id}|{fid}".encode()
    return b64url_encode(hashlib.blake2b(message, key=key, digest_size=32).digest())


def field_value(body: dict[str, Any], fid: str) -> dict[str, Any]:
    value: dict[str, Any] = decoded(body["disclosures"][find(body, "field", fid=fid)])[2]
    return value


# --------------------------------------------------------------------------
# what seal_envelope refuses


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"fields": {}, "grants": []}, "malformed"),
        ({"fields": {"Full_name": "x"}, "grants": [], "requests": []}, "invalid-field"),
        ({"fields": {"a" * 65: "x"}, "grants": [], "requests": []}, "invalid-field"),
        ({"fields": {"name\n": "x"}, "grants": [], "requests": []}, "invalid-field"),
        ({"fields": {"name": b"x"}, "grants": [], "requests": []}, "invalid-field"),
        ({"grants": [grant("medical_needs", SHELTER)]}, "field-mismatch"),
        ({"grants": []}, "missing-grant"),
        ({"requests": []}, "missing-request"),
        ({"requests": REQUESTS[:1]}, "missing-request"),
        ({"requests": [*REQUESTS, request(POLICE)]}, "missing-grant"),
        ({"requests": [*REQUESTS, request(SENDER)]}, "malformed"),
        ({"requests": [*REQUESTS, REQUESTS[0]]}, "duplicate-disclosure"),
        ({"grants": [*GRANTS, GRANTS[0]]}, "duplicate-disclosure"),
        ({"grants": [grant("full_name", SENDER, "investigation")]}, "duplicate-disclosure"),
        # the sender's client checks its own body as the server will
        ({"grants": [grant("full_name", SHELTER, "curiosity")]}, "bad-disclosure"),
        ({"grants": [grant("full_name", SHELTER, "sender")], "requests": REQUESTS[:1]},
         "invalid-consent"),
        ({"grants": [grant("full_name", SHELTER, expires_at=CREATED)], "requests": REQUESTS[:1]},
         "invalid-consent"),
        ({"grants": [grant("full_name", SHELTER, expires_at="2027-02-18")]}, "bad-disclosure"),
        ({"grants": [grant("full_name", SHELTER, release_ref="")]}, "bad-disclosure"),
        ({"requests": [Request(SHELTER, (), "urgent")]}, "bad-disclosure"),
        ({"requests": [Request(SHELTER, ("tea",), "urgent")]}, "bad-disclosure"),
        ({"requests": [Request(SHELTER, ("shelter",), "whenever")]}, "bad-disclosure"),
        ({"referral_id": str(uuid.uuid4()).upper()}, "malformed"),
        ({"referral_id": uuid.uuid4().hex}, "malformed"),
        ({"created_at": "2026-11-20 10:00:00Z"}, "malformed"),
        ({"created_at": "2026-11-20T10:00:00+00:00"}, "malformed"),
    ],
)
def test_seal_envelope_refuses(overrides: dict[str, Any], code: str) -> None:
    with refused(code):
        seal(**overrides)


# --------------------------------------------------------------------------
# what check_envelope refuses: every rule, each change re-signed by the sender


def _add(kind: Kind, value: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        body["disclosures"].append(make_disclosure(b"\x07" * 16, kind, value))
        repad(body)

    return change


def _drop(kind: str, **match: str) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        del body["disclosures"][find(body, kind, **match)]
        repad(body)

    return change


def _value(kind: str, match: dict[str, str], **update: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        edit(body, find(body, kind, **match), lambda a: a[2].update(update))

    return change


def _drop_sender_copy(body: dict[str, Any]) -> None:
    fid = FID["date_of_birth"]
    del body["disclosures"][find(body, "grant", fid=fid, recipient=SENDER)]
    del body["wrapped_keys"][wrapped_index(body, fid, SENDER)]
    repad(body)


def _grant_value(fid: str, recipient: str, **kw: Any) -> dict[str, Any]:
    return {"fid": fid, "recipient": recipient, "kid": KEYS[recipient].enc_kid,
            "wrapped_key_sha256": b64url_encode(bytes(32)), "purpose": "investigation",
            "expires_at": EXPIRES, "release_ref": None} | kw


def _second_grant_same_pair(body: dict[str, Any]) -> None:
    _add("grant", _grant_value(FID["narrative"], LEGAL))(body)


def _grant_of_unknown_field(body: dict[str, Any]) -> None:
    _add("grant", _grant_value(b64url_encode(bytes(16)), LEGAL))(body)


def _unsorted_digests(body: dict[str, Any]) -> None:
    body["manifest"]["digests"].reverse()
    resign(body)


def _duplicate_digest(body: dict[str, Any]) -> None:
    digests = body["manifest"]["digests"]
    decoy = next(d for d in digests if d not in {disclosure_digest(x) for x in body["disclosures"]})
    digests[digests.index(decoy)] = digests[digests.index(decoy) - 1]
    digests.sort()
    resign(body)


def _short_digests(body: dict[str, Any]) -> None:
    real = {disclosure_digest(x) for x in body["disclosures"]}
    body["manifest"]["digests"].remove(next(d for d in body["manifest"]["digests"]
                                            if d not in real))
    resign(body)


def _sender_kid(body: dict[str, Any]) -> None:
    body["manifest"]["sender_kid"] = KEYS[SHELTER].sig_kid
    resign(body)


def _signed_by_another_key(body: dict[str, Any]) -> None:
    resign(body, KEYS[SHELTER].sig_seed)


def _swap_ciphertexts(body: dict[str, Any]) -> None:
    c = body["ciphertexts"]
    a, b = FID["full_name"], FID["narrative"]
    c[a], c[b] = c[b], c[a]


def _swap_wrapped_keys(body: dict[str, Any]) -> None:
    w = body["wrapped_keys"]
    i = wrapped_index(body, FID["full_name"], LEGAL)
    j = wrapped_index(body, FID["narrative"], LEGAL)
    w[i]["wrapped_key"], w[j]["wrapped_key"] = w[j]["wrapped_key"], w[i]["wrapped_key"]


def _wrapped_kid(body: dict[str, Any]) -> None:
    body["wrapped_keys"][wrapped_index(body, FID["narrative"], LEGAL)]["kid"] = KEYS[POLICE].enc_kid


def _drop_wrapped(body: dict[str, Any]) -> None:
    del body["wrapped_keys"][wrapped_index(body, FID["narrative"], LEGAL)]


def _duplicate_wrapped(body: dict[str, Any]) -> None:
    body["wrapped_keys"].append(dict(body["wrapped_keys"][0]))


def _wrapped_for_other_recipient(body: dict[str, Any]) -> None:
    body["wrapped_keys"][wrapped_index(body, FID["narrative"], LEGAL)]["recipient"] = POLICE


def _duplicate_disclosure(body: dict[str, Any]) -> None:
    body["disclosures"].append(body["disclosures"][0])


def _undisclosed(body: dict[str, Any]) -> None:
    extra = make_disclosure(b"\x01" * 16, "request", {
        "recipient": POLICE, "services": ["legal"], "urgency": "routine", "case_ref": None,
    })
    body["disclosures"].append(extra)
    repad(body, omit=[disclosure_digest(extra)])


def _extra_ciphertext(body: dict[str, Any]) -> None:
    body["ciphertexts"][b64url_encode(bytes(16))] = body["ciphertexts"][FID["narrative"]]


def _drop_ciphertext(body: dict[str, Any]) -> None:
    del body["ciphertexts"][FID["narrative"]]


def _drop_field_disclosure(body: dict[str, Any]) -> None:
    _drop("field", fid=FID["narrative"])(body)


def _raw_disclosure(raw: bytes) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        body["disclosures"].append(b64url_encode(raw))
        repad(body)

    return change


def _field_disclosure_json(**update: Any) -> bytes:
    value = field_value(BASE, FID["narrative"]) | update
    return json.dumps(["AAAAAAAAAAAAAAAAAAAAAA", "field", value]).encode()


def _sender_only(body: dict[str, Any]) -> None:
    body["disclosures"] = [
        d for d in body["disclosures"]
        if decoded(d)[1] == "field" or decoded(d)[2]["recipient"] == SENDER
    ]
    body["wrapped_keys"] = [w for w in body["wrapped_keys"] if w["recipient"] == SENDER]
    repad(body)


def _set_type(body: dict[str, Any]) -> None:
    edit(body, find(body, "field", fid=FID["narrative"]), lambda a: a.__setitem__(1, "fieldz"))


NARRATIVE_GRANT = {"fid": FID["narrative"], "recipient": LEGAL}
LEGAL_REQUEST = {"recipient": LEGAL}

CHECK_REFUSALS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("request-to-an-agency-with-no-grant",
     _add("request", {"recipient": POLICE, "services": ["investigation"], "urgency": "routine",
                      "case_ref": None}), "missing-grant"),
    ("recipient-grants-but-no-request", _drop("request", recipient=LEGAL), "missing-request"),
    ("no-recipient-at-all", _sender_only, "missing-request"),
    ("request-to-the-sender",
     _add("request", {"recipient": SENDER, "services": ["legal"], "urgency": "routine",
                      "case_ref": None}), "malformed"),
    ("undisclosed-digest", _undisclosed, "undisclosed-digest"),
    ("same-disclosure-twice", _duplicate_disclosure, "duplicate-disclosure"),
    ("second-grant-for-a-pair", _second_grant_same_pair, "duplicate-disclosure"),
    ("second-request", _add("request", {"recipient": LEGAL, "services": ["legal"],
                                        "urgency": "routine", "case_ref": None}),
     "duplicate-disclosure"),
    ("second-field-disclosure", _add("field", field_value(BASE, FID["narrative"])),
     "duplicate-disclosure"),
    ("digests-unsorted", _unsorted_digests, "bad-padding"),
    ("digest-twice", _duplicate_digest, "bad-padding"),
    ("digests-not-a-multiple-of-8", _short_digests, "bad-padding"),
    ("sender-copy-missing", _drop_sender_copy, "missing-sender-copy"),
    ("ciphertext-without-field", _extra_ciphertext, "field-mismatch"),
    ("field-without-ciphertext", _drop_ciphertext, "field-mismatch"),
    ("ciphertext-without-field-disclosure", _drop_field_disclosure, "field-mismatch"),
    ("grant-of-unknown-field", _grant_of_unknown_field, "field-mismatch"),
    ("ciphertexts-swapped", _swap_ciphertexts, "hash-mismatch"),
    ("wrapped-keys-swapped", _swap_wrapped_keys, "hash-mismatch"),
    ("wrapped-key-kid-not-its-grants", _wrapped_kid, "consent-mismatch"),
    ("grant-without-wrapped-key", _drop_wrapped, "consent-mismatch"),
    ("wrapped-key-twice", _duplicate_wrapped, "consent-mismatch"),
    ("wrapped-key-without-grant", _wrapped_for_other_recipient, "consent-mismatch"),
    ("purpose-sender-for-a-recipient", _value("grant", NARRATIVE_GRANT, purpose="sender"),
     "invalid-consent"),
    ("no-expiry", _value("grant", NARRATIVE_GRANT, expires_at=None), "invalid-consent"),
    ("expiry-at-creation", _value("grant", NARRATIVE_GRANT, expires_at=CREATED),
     "invalid-consent"),
    ("expiry-before-creation-with-fraction",
     _value("grant", NARRATIVE_GRANT, expires_at="2026-11-20T09:59:59.999Z"), "invalid-consent"),
    ("sender-copy-with-expiry",
     _value("grant", {"fid": FID["narrative"], "recipient": SENDER}, expires_at=EXPIRES),
     "invalid-consent"),
    ("sender-copy-with-purpose",
     _value("grant", {"fid": FID["narrative"], "recipient": SENDER}, purpose="investigation"),
     "invalid-consent"),
    ("unknown-purpose", _value("grant", NARRATIVE_GRANT, purpose="curiosity"), "bad-disclosure"),
    ("unknown-member-in-grant", _value("grant", NARRATIVE_GRANT, field="narrative"),
     "bad-disclosure"),
    ("unknown-member-in-field", _value("field", {"fid": FID["narrative"]}, name="narrative"),
     "bad-disclosure"),
    ("unknown-member-in-request", _value("request", LEGAL_REQUEST, note="x"), "bad-disclosure"),
    ("request-services-empty", _value("request", LEGAL_REQUEST, services=[]), "bad-disclosure"),
    ("request-service-unknown", _value("request", LEGAL_REQUEST, services=["tea"]),
     "bad-disclosure"),
    ("request-urgency-unknown", _value("request", LEGAL_REQUEST, urgency="soon"),
     "bad-disclosure"),
    ("request-case-ref-bad", _value("request", LEGAL_REQUEST, case_ref="a b"), "bad-disclosure"),
    ("grant-kid-not-base64url-16", _value("grant", NARRATIVE_GRANT, kid="x"), "bad-disclosure"),
    ("grant-expiry-with-offset",
     _value("grant", NARRATIVE_GRANT, expires_at="2027-02-18T10:00:00+00:00"), "bad-disclosure"),
    ("grant-recipient-uppercase",
     _value("grant", NARRATIVE_GRANT, recipient=LEGAL.upper()), "bad-disclosure"),
    ("disclosure-type-unknown", _set_type, "bad-disclosure"),
    ("disclosure-four-elements", _raw_disclosure(b'["AAAAAAAAAAAAAAAAAAAAAA","field",{},1]'),
     "bad-disclosure"),
    ("disclosure-not-json", _raw_disclosure(b"not json"), "bad-disclosure"),
    ("disclosure-not-an-array", _raw_disclosure(b'{"salt":"x"}'), "bad-disclosure"),
    ("disclosure-salt-short", _raw_disclosure(b'["AAAA","field",{}]'), "bad-disclosure"),
    ("disclosure-salt-not-a-string", _raw_disclosure(b'[1,"field",{}]'), "bad-disclosure"),
    ("disclosure-value-not-an-object", _raw_disclosure(b'["AAAAAAAAAAAAAAAAAAAAAA","field",[]]'),
     "bad-disclosure"),
    ("disclosure-nan", _raw_disclosure(b'["AAAAAAAAAAAAAAAAAAAAAA","field",NaN]'),
     "bad-disclosure"),
    ("disclosure-duplicate-key",
     _raw_disclosure(_field_disclosure_json()[:-2] + b',"fid":"AAAAAAAAAAAAAAAAAAAAAA"}]'),
     "bad-disclosure"),
    ("disclosure-not-utf8", _raw_disclosure(b'["\xff"]'), "bad-disclosure"),
    ("sender-kid-not-the-signer", _sender_kid, "kid-mismatch"),
    ("signed-by-another-key", _signed_by_another_key, "bad-signature"),
    ("manifest-altered-after-signing",
     lambda b: b["manifest"].update(created_at="2026-11-20T10:00:01Z"), "bad-signature"),
]


@pytest.mark.parametrize(
    ("change", "code"), [c[1:] for c in CHECK_REFUSALS], ids=[c[0] for c in CHECK_REFUSALS]
)
def test_check_envelope_refuses(change: Callable[[dict[str, Any]], None], code: str) -> None:
    body = fresh()
    change(body)
    with refused(code):
        check(body)


def test_a_disclosure_spelled_in_other_json_is_accepted_and_hashed_as_sent() -> None:
    body = fresh()
    index = find(body, "request", recipient=LEGAL)
    salt, kind, value = decoded(body["disclosures"][index])
    spaced = b64url_encode(json.dumps([salt, kind, value], indent=1).encode())
    body["disclosures"][index] = spaced
    repad(body)
    checked = check(body)
    assert checked.requests[LEGAL].digest == disclosure_digest(spaced)


def test_check_envelope_returns_what_it_checked() -> None:
    checked = check(BASE)
    assert checked.recipients == {SHELTER, LEGAL}
    assert set(checked.fields) == set(FID.values())
    assert set(checked.requests) == {SHELTER, LEGAL}
    assert checked.manifest_bytes == canonical_json(BASE["manifest"])
    assert len(checked.grants) == len(BASE["wrapped_keys"])


def test_size_limits() -> None:
    with refused("too-many-fields"):
        check(BASE, limits=Limits(max_fields=len(FIELDS) - 1))
    with refused("too-many-recipients"):
        check(BASE, limits=Limits(max_recipients=1))
    longest = max(len(v.encode()) for v in FIELDS.values())
    with refused("field-too-large"):
        check(BASE, limits=Limits(max_field_bytes=longest))
    check(BASE, limits=Limits(max_fields=len(FIELDS), max_recipients=2,
                              max_field_bytes=longest + 64))


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b.update(statuses=[]),
        lambda b: b["manifest"].update(extra=1),
        lambda b: b["manifest"].update(v=1),
        lambda b: b["manifest"].update(version=True),
        lambda b: b["wrapped_keys"][0].update(field="full_name"),
        lambda b: b.update(signature=b["signature"] + "A"),
        lambda b: b.update(disclosures=b["disclosures"][:2]),
    ],
)
def test_the_wire_model_refuses_unknown_members_and_wrong_types(change: Any) -> None:
    body = fresh()
    change(body)
    with pytest.raises(pydantic.ValidationError):
        check(body)


# --------------------------------------------------------------------------
# what open_envelope refuses


def test_open_refuses_a_signature_by_another_key() -> None:
    with refused("kid-mismatch"):
        open_envelope(BASE, agency_id=LEGAL, enc_private=KEYS[LEGAL].enc_private,
                      sender_sig_public=KEYS[SHELTER].sig_public)
    body = fresh()
    _signed_by_another_key(body)
    with refused("bad-signature"):
        open_as(body, LEGAL)


def test_open_refuses_an_undisclosed_or_duplicate_disclosure_even_if_not_its_own() -> None:
    body = fresh()
    _undisclosed(body)
    with refused("undisclosed-digest"):
        open_as(body, LEGAL)
    body = fresh()
    body["disclosures"].append(body["disclosures"][-1])
    with refused("duplicate-disclosure"):
        open_as(body, LEGAL)


def test_open_refuses_a_wrapped_key_for_another_encryption_key() -> None:
    body = fresh()
    i = wrapped_index(body, FID["narrative"], LEGAL)
    data = keys.seal(KEYS[POLICE].enc_public, open_as(BASE, SENDER).field_keys[FID["narrative"]])
    body["wrapped_keys"][i] |= {"kid": KEYS[POLICE].enc_kid, "wrapped_key": b64url_encode(data)}
    edit(body, find(body, "grant", **NARRATIVE_GRANT), lambda a: a[2].update(
        kid=KEYS[POLICE].enc_kid, wrapped_key_sha256=b64url_encode(hashlib.sha256(data).digest()),
    ))
    check(body)  # the server cannot tell: it is the recipient's to refuse
    with refused("kid-mismatch"):
        open_as(body, LEGAL)


def test_open_refuses_a_served_wrapped_key_without_its_ciphertext() -> None:
    view = served_to(BASE, LEGAL)
    del view["ciphertexts"][FID["narrative"]]
    with refused("field-mismatch"):
        open_as(view, LEGAL)


def test_open_refuses_a_served_wrapped_key_without_its_grant_or_field_disclosure() -> None:
    view = served_to(BASE, LEGAL)
    view["disclosures"] = [d for d in view["disclosures"] if decoded(d)[1] != "grant"]
    with refused("consent-mismatch"):
        open_as(view, LEGAL)
    view = served_to(BASE, LEGAL)
    view["disclosures"] = [d for d in view["disclosures"] if decoded(d)[1] != "field"]
    with refused("field-mismatch"):
        open_as(view, LEGAL)


@pytest.mark.parametrize(
    "plaintext",
    [b"not json", b'{"name":"Narrative","value":"x"}', b'{"name":"n","value":1}',
     b'{"name":"n","value":"x","extra":1}', b'{"name":"n","name":"m","value":"x"}', b"\xff"],
)
def test_a_dishonest_sender_cannot_make_a_recipient_read_an_invalid_field(
    plaintext: bytes,
) -> None:
    import nacl.secret

    body = fresh()
    fid = FID["narrative"]
    key = open_as(BASE, SENDER).field_keys[fid]
    nonce = bytes(24)
    aad = f"refgate/v2|{body['manifest']['referral_id']}|{fid}".encode()
    blob = bytes(nacl.secret.Aead(key).encrypt(plaintext, aad, nonce))
    body["ciphertexts"][fid] = b64url_encode(blob)
    edit(body, find(body, "field", fid=fid), lambda a: a[2].update(
        ciphertext_sha256=b64url_encode(hashlib.sha256(blob).digest())))
    check(body)
    with refused("invalid-field"):
        open_as(body, LEGAL)


def test_two_fields_with_one_name_are_refused() -> None:
    body = seal(fields={"a": "1", "b": "2"}, grants=[grant("a", LEGAL)], requests=[request(LEGAL)])
    fa, fb = (fid_of(body, n) for n in ("a", "b"))
    # the sender's client is dishonest: field b's ciphertext also says "a"
    import nacl.secret

    key = open_as(body, SENDER).field_keys[fb]
    aad = f"refgate/v2|{body['manifest']['referral_id']}|{fb}".encode()
    blob = bytes(nacl.secret.Aead(key).encrypt(b'{"name":"a","value":"3"}', aad, bytes(24)))
    body["ciphertexts"][fb] = b64url_encode(blob)
    edit(body, find(body, "field", fid=fb), lambda a: a[2].update(
        ciphertext_sha256=b64url_encode(hashlib.sha256(blob).digest())))
    assert fa != fb
    with refused("invalid-field"):
        open_as(body, SENDER)


def test_a_dishonest_sender_cannot_give_two_recipients_two_keys() -> None:
    body = fresh()
    fid = FID["full_name"]
    other = bytes(32)
    data = keys.seal(KEYS[SHELTER].enc_public, other)
    body["wrapped_keys"][wrapped_index(body, fid, SHELTER)]["wrapped_key"] = b64url_encode(data)
    edit(body, find(body, "grant", fid=fid, recipient=SHELTER), lambda a: a[2].update(
        wrapped_key_sha256=b64url_encode(hashlib.sha256(data).digest())))
    check(body)
    assert open_as(body, LEGAL).fields["full_name"] == FIELDS["full_name"]
    with refused("bad-commitment"):
        open_as(body, SHELTER)


@pytest.mark.parametrize("document", [[], {"manifest": {}}, {"manifest": 1, "signature": "",
                                                          "disclosures": [], "wrapped_keys": []}])
def test_open_refuses_a_document_that_is_not_a_referral(document: Any) -> None:
    with pytest.raises(EnvelopeError):
        open_as(document, LEGAL)


@pytest.mark.parametrize(
    ("member", "value"),
    [("signature", 1), ("disclosures", {}), ("wrapped_keys", {}), ("ciphertexts", ["x"])],
)
def test_open_refuses_members_of_the_wrong_type(member: str, value: Any) -> None:
    body = fresh()
    body[member] = value
    with refused("malformed"):
        open_as(body, LEGAL)


# --------------------------------------------------------------------------
# amendments


def amended(document: dict[str, Any], *grants: Grant, requests: Iterable[Request] = ()
            ) -> dict[str, Any]:
    return amend(
        document,
        sender_agency=SENDER,
        sender_sig_seed=KEYS[SENDER].sig_seed,
        sender_enc_private=KEYS[SENDER].enc_private,
        grants=list(grants),
        requests=list(requests),
    )


def check_amend(body: dict[str, Any], current: dict[str, Any] | None = None,
                recipients: Iterable[str] = (SHELTER, LEGAL)) -> Any:
    return check_amendment(
        Manifest.model_validate((current or BASE)["manifest"], strict=True),
        Amendment.model_validate(json.loads(json.dumps(body)), strict=True),
        sender_sig_public=KEYS[SENDER].sig_public,
        fids=FID.values(),
        recipients=recipients,
    )


def merged(document: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The referral after the server stores an amendment (a re-grant replaces the old one)."""
    pairs = {(w["fid"], w["recipient"]) for w in body["wrapped_keys"]}
    kept = [d for d in document["disclosures"]
            if not (decoded(d)[1] == "grant" and (decoded(d)[2]["fid"], decoded(d)[2]["recipient"])
                    in pairs)]
    return {
        "manifest": body["manifest"],
        "signature": body["signature"],
        "disclosures": kept + body["disclosures"],
        "ciphertexts": document["ciphertexts"],
        "wrapped_keys": [w for w in document["wrapped_keys"]
                         if (w["fid"], w["recipient"]) not in pairs] + body["wrapped_keys"],
    }


STRANGER = str(uuid.UUID(int=7))
POLICE_GRANT = grant("narrative", POLICE, "investigation")
POLICE_REQUEST = request(POLICE, "investigation", urgency="routine")
AMENDED = amended(BASE, POLICE_GRANT, requests=[POLICE_REQUEST])


def test_a_new_recipient_is_added_by_an_amendment() -> None:
    body = AMENDED
    assert set(body) == {"manifest", "signature", "disclosures", "wrapped_keys"}
    m = body["manifest"]
    assert m["version"] == 2
    assert set(BASE["manifest"]["digests"]) < set(m["digests"])
    assert len(m["digests"]) % 8 == 0
    checked = check_amend(body)
    assert checked.new_recipients == {POLICE}
    assert set(checked.grants) == {(FID["narrative"], POLICE)}
    assert set(checked.requests) == {POLICE}
    after = merged(BASE, body)
    check(after)
    assert open_as(served_to(after, POLICE), POLICE).fields == {"narrative": FIELDS["narrative"]}
    assert open_as(served_to(after, LEGAL), LEGAL).fields == {f: FIELDS[f] for f in LEGAL_SEES}
    again = amended(after, grant("full_name", POLICE, "investigation"))
    assert again["manifest"]["version"] == 3
    check_amend(again, after, recipients=(SHELTER, LEGAL, POLICE))


def test_an_existing_recipient_is_re_granted_without_a_new_request() -> None:
    body = amended(BASE, grant("narrative", SHELTER, "safety_planning"),
                   grant("full_name", LEGAL, expires_at="2027-05-01T00:00:00Z"))
    checked = check_amend(body)
    assert checked.new_recipients == frozenset()
    after = merged(BASE, body)
    check(after)
    assert open_as(served_to(after, SHELTER), SHELTER).fields == {
        f: FIELDS[f] for f in SHELTER_SEES | {"narrative"}
    }
    assert open_as(served_to(after, LEGAL, now="2027-03-01T00:00:00Z"), LEGAL).fields == {
        "full_name": FIELDS["full_name"]
    }


def _am(change: Callable[[dict[str, Any]], None], *, sign: bool = True
        ) -> Callable[[dict[str, Any]], None]:
    def apply(body: dict[str, Any]) -> None:
        change(body)
        if sign:
            resign(body)

    return apply


def _am_repad(body: dict[str, Any]) -> None:
    repad(body, extra=BASE["manifest"]["digests"])


def _am_add(kind: Kind, value: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        body["disclosures"].append(make_disclosure(b"\x09" * 16, kind, value))
        _am_repad(body)

    return change


def _am_drop_request(body: dict[str, Any]) -> None:
    body["disclosures"] = [d for d in body["disclosures"] if decoded(d)[1] != "request"]
    _am_repad(body)


def _am_old_disclosure(body: dict[str, Any]) -> None:
    body["disclosures"].append(BASE["disclosures"][0])


def _am_drop_current_digest(body: dict[str, Any]) -> None:
    digests = set(body["manifest"]["digests"])
    digests.discard(disclosure_digest(BASE["disclosures"][0]))
    digests.add(b64url_encode(bytes(32)))
    body["manifest"]["digests"] = sorted(digests)
    resign(body)


AMEND_REFUSALS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("same-version", _am(lambda b: b["manifest"].update(version=1)), "manifest-changed"),
    ("version-skips", _am(lambda b: b["manifest"].update(version=3)), "manifest-changed"),
    ("referral-id-changed", _am(lambda b: b["manifest"].update(referral_id=str(uuid.uuid4()))),
     "manifest-changed"),
    ("created-at-changed", _am(lambda b: b["manifest"].update(created_at="2026-11-20T10:00:01Z")),
     "manifest-changed"),
    ("sender-changed", _am(lambda b: b["manifest"].update(sender_agency=LEGAL)),
     "manifest-changed"),
    ("a-current-digest-dropped", _am_drop_current_digest, "manifest-changed"),
    ("new-recipient-without-request", _am_drop_request, "missing-request"),
    ("second-request-for-an-existing-recipient",
     _am_add("request", {"recipient": LEGAL, "services": ["legal"], "urgency": "routine",
                         "case_ref": None}), "duplicate-disclosure"),
    ("request-without-grant",
     _am_add("request", {"recipient": STRANGER, "services": ["legal"],
                         "urgency": "routine", "case_ref": None}), "missing-grant"),
    ("adds-a-field", _am_add("field", field_value(BASE, FID["narrative"])), "malformed"),
    ("grant-of-unknown-field", _am_add("grant", _grant_value(b64url_encode(bytes(16)), POLICE)),
     "field-mismatch"),
    ("sender-copy", _am_add("grant", _grant_value(FID["narrative"], SENDER, purpose="sender",
                                                  expires_at=None)), "malformed"),
    ("grant-expired-at-creation",
     _am_add("grant", _grant_value(FID["full_name"], POLICE, expires_at=CREATED)),
     "invalid-consent"),
    ("re-sends-a-current-disclosure", _am_old_disclosure, "duplicate-disclosure"),
    ("undisclosed", _am(lambda b: b["disclosures"].append(
        make_disclosure(b"\x02" * 16, "request", {"recipient": SHELTER, "services": ["legal"],
                                                   "urgency": "routine", "case_ref": None})),
        sign=False), "undisclosed-digest"),
    ("wrapped-key-for-a-pair-not-granted",
     lambda b: b["wrapped_keys"][0].update(recipient=LEGAL), "consent-mismatch"),
    ("wrapped-key-extra", lambda b: b["wrapped_keys"].append(BASE["wrapped_keys"][0]),
     "consent-mismatch"),
    ("wrapped-key-swapped", lambda b: b["wrapped_keys"][0].update(
        wrapped_key=BASE["wrapped_keys"][0]["wrapped_key"]), "hash-mismatch"),
    ("not-signed", lambda b: b.update(signature=BASE["signature"]), "bad-signature"),
    ("unsorted", _am(lambda b: b["manifest"]["digests"].reverse()), "bad-padding"),
]


@pytest.mark.parametrize(
    ("change", "code"), [c[1:] for c in AMEND_REFUSALS], ids=[c[0] for c in AMEND_REFUSALS]
)
def test_check_amendment_refuses(change: Callable[[dict[str, Any]], None], code: str) -> None:
    body = copy.deepcopy(AMENDED)
    change(body)
    with refused(code):
        check_amend(body)


def test_too_many_recipients_after_an_amendment() -> None:
    with refused("too-many-recipients"):
        check_amendment(
            Manifest.model_validate(BASE["manifest"], strict=True),
            Amendment.model_validate(AMENDED, strict=True),
            sender_sig_public=KEYS[SENDER].sig_public, fids=FID.values(),
            recipients=(SHELTER, LEGAL), max_recipients=2,
        )


def test_amend_refuses() -> None:
    with refused("malformed"):
        amended(BASE)
    with refused("field-mismatch"):
        amended(BASE, grant("medical_needs", POLICE), requests=[POLICE_REQUEST])
    with refused("missing-request"):
        amended(BASE, POLICE_GRANT)
    altered = fresh()
    altered["manifest"]["created_at"] = "2026-11-20T10:00:01Z"
    with refused("bad-signature"):
        amended(altered, POLICE_GRANT, requests=[POLICE_REQUEST])
    with refused("malformed"):  # a recipient holding the sender's signing key still cannot
        amend(BASE, sender_agency=LEGAL, sender_sig_seed=KEYS[SENDER].sig_seed,
              sender_enc_private=KEYS[LEGAL].enc_private, grants=[POLICE_GRANT],
              requests=[POLICE_REQUEST])
    with refused("kid-mismatch"):
        amend(BASE, sender_agency=SENDER, sender_sig_seed=KEYS[LEGAL].sig_seed,
              sender_enc_private=KEYS[SENDER].enc_private, grants=[POLICE_GRANT],
              requests=[POLICE_REQUEST])


def test_amend_refuses_a_sender_copy_that_does_not_match_the_commitment() -> None:
    body = fresh()
    fid = FID["narrative"]
    data = keys.seal(KEYS[SENDER].enc_public, bytes(32))
    body["wrapped_keys"][wrapped_index(body, fid, SENDER)]["wrapped_key"] = b64url_encode(data)
    edit(body, find(body, "grant", fid=fid, recipient=SENDER), lambda a: a[2].update(
        wrapped_key_sha256=b64url_encode(hashlib.sha256(data).digest())))
    with refused("bad-commitment"):
        amended(body, POLICE_GRANT, requests=[POLICE_REQUEST])


# --------------------------------------------------------------------------
# tampering, as properties


TARGETS = ["disclosure", "ciphertext", "wrapped_key", "commitment", "manifest", "signature",
           "ciphertext_resigned", "wrapped_key_resigned"]


@PROPERTY
@given(
    target=st.sampled_from(TARGETS),
    index=st.integers(min_value=0, max_value=1000),
    position=st.integers(min_value=0, max_value=10_000),
    mask=st.integers(min_value=1, max_value=255),
)
def test_any_flipped_byte_makes_opening_fail(
    target: str, index: int, position: int, mask: int
) -> None:
    body = fresh()
    reader = SENDER
    if target == "disclosure":
        i = index % len(body["disclosures"])
        body["disclosures"][i] = flip_b64(body["disclosures"][i], position, mask)
    elif target.startswith("ciphertext"):
        fid = sorted(body["ciphertexts"])[index % len(FIELDS)]
        blob = flip(b64url_decode(body["ciphertexts"][fid]), position, mask)
        body["ciphertexts"][fid] = b64url_encode(blob)
        if target.endswith("resigned"):
            edit(body, find(body, "field", fid=fid), lambda a: a[2].update(
                ciphertext_sha256=b64url_encode(hashlib.sha256(blob).digest())))
    elif target.startswith("wrapped_key"):
        w = body["wrapped_keys"][index % len(body["wrapped_keys"])]
        reader = w["recipient"]
        data = flip(b64url_decode(w["wrapped_key"]), position, mask)
        w["wrapped_key"] = b64url_encode(data)
        if target.endswith("resigned"):
            edit(body, find(body, "grant", fid=w["fid"], recipient=w["recipient"]),
                 lambda a: a[2].update(
                     wrapped_key_sha256=b64url_encode(hashlib.sha256(data).digest())))
    elif target == "commitment":
        fid = sorted(body["ciphertexts"])[index % len(FIELDS)]
        edit(body, find(body, "field", fid=fid),
             lambda a: a[2].update(commitment=flip_b64(a[2]["commitment"], position, mask)))
    elif target == "manifest":
        text = canonical_json(body["manifest"])
        try:
            body["manifest"] = json.loads(flip(text, position, mask))
        except ValueError:
            return  # not JSON any more: nothing to serve
    else:
        body["signature"] = flip_b64(body["signature"], position, mask)
    with pytest.raises(EnvelopeError):
        open_as(body, reader)


@PROPERTY
@given(
    salt=st.binary(min_size=16, max_size=16),
    index=st.integers(min_value=0, max_value=1000),
    served=st.booleans(),
)
def test_a_disclosure_whose_digest_is_not_in_the_manifest_is_refused(
    salt: bytes, index: int, served: bool
) -> None:
    body = fresh()
    _s, kind, value = decoded(body["disclosures"][index % len(body["disclosures"])])
    extra = make_disclosure(salt, kind, value)
    body["disclosures"].append(extra)
    with refused("undisclosed-digest"):
        check(body)
    view = served_to(body, LEGAL) if served else body
    if served:
        view["disclosures"].append(extra)
    with refused("undisclosed-digest"):
        open_as(view, LEGAL if served else SENDER)


def _move_field(body: dict[str, Any], source: dict[str, Any], src_fid: str, dst_fid: str,
                *, recommit: bool) -> None:
    """Put ``source``'s field ``src_fid`` (ciphertext, key) in ``body`` under ``dst_fid``.

    Done as the sender would (it holds every key and the signing key), so the
    hashes, the grant and the manifest all agree: only the AAD, or the key
    commitment when it is not recomputed, can tell.
    """
    key = open_as(source, SENDER).field_keys[src_fid]
    referral_id = body["manifest"]["referral_id"]
    blob = b64url_decode(source["ciphertexts"][src_fid])
    body["ciphertexts"][dst_fid] = b64url_encode(blob)
    source_commit = field_value(source, src_fid)["commitment"]
    new_commit = commit(key, referral_id, dst_fid) if recommit else source_commit
    edit(body, find(body, "field", fid=dst_fid), lambda a: a[2].update(
        ciphertext_sha256=b64url_encode(hashlib.sha256(blob).digest()), commitment=new_commit))
    for w in body["wrapped_keys"]:
        if w["fid"] != dst_fid:
            continue
        data = keys.seal(KEYS[w["recipient"]].enc_public, key)
        w["wrapped_key"] = b64url_encode(data)
        digest = b64url_encode(hashlib.sha256(data).digest())
        index = find(body, "grant", fid=dst_fid, recipient=w["recipient"])
        edit(body, index, _setter("wrapped_key_sha256", digest))


def _setter(member: str, value: str) -> Callable[[list[Any]], None]:
    def change(array: list[Any]) -> None:
        array[2][member] = value

    return change


OTHER = seal()


@PROPERTY
@given(
    src=st.sampled_from(sorted(FIELDS)),
    dst=st.sampled_from(sorted(FIELDS)),
    other_referral=st.booleans(),
    recommit=st.booleans(),
)
def test_a_ciphertext_moved_to_another_fid_or_referral_does_not_open(
    src: str, dst: str, other_referral: bool, recommit: bool
) -> None:
    source = OTHER if other_referral else BASE
    src_fid = fid_of(OTHER, src) if other_referral else FID[src]
    if src_fid == FID[dst]:
        return  # the field in its own place: the control below
    body = fresh()
    _move_field(body, source, src_fid, FID[dst], recommit=recommit)
    check(body)  # hashes, grants and signature agree: the server cannot tell
    with refused("decrypt-failed" if recommit else "bad-commitment"):
        open_as(body, SENDER)


def test_moving_a_field_to_its_own_place_is_a_valid_control() -> None:
    body = fresh()
    _move_field(body, BASE, FID["narrative"], FID["narrative"], recommit=True)
    assert open_as(body, LEGAL).fields == {f: FIELDS[f] for f in LEGAL_SEES}


# --------------------------------------------------------------------------
# signed statuses and notes


REFERRAL = BASE["manifest"]["referral_id"]
NOTE = seal_note("Accepted; intake Tuesday 10:00 ✔", KEYS[SENDER].enc_public)
STATUS = {"recipient": LEGAL} | sign_status(
    referral_id=REFERRAL, recipient=LEGAL, status="accepted", reason=None, note=NOTE,
    signed_at="2026-11-21T09:00:00Z", sig_seed=KEYS[LEGAL].sig_seed,
)


def test_a_signed_status_verifies_and_covers_its_members() -> None:
    verify_status(STATUS, referral_id=REFERRAL, sig_public=KEYS[LEGAL].sig_public)
    verify_status(STATUS | {"updated_at": "2026-11-21T09:00:01Z"}, referral_id=REFERRAL,
                  sig_public=KEYS[LEGAL].sig_public)
    message = status_signing_input(
        referral_id=REFERRAL, recipient=LEGAL, status="accepted", reason=None,
        note_sha256=b64url_encode(hashlib.sha256(b64url_decode(NOTE)).digest()),
        signed_at="2026-11-21T09:00:00Z",
    )
    assert message.startswith(b"refgate/v2/status\n{")
    assert json.loads(message.split(b"\n", 1)[1]) == {
        "referral_id": REFERRAL, "recipient": LEGAL, "status": "accepted", "reason": None,
        "note_sha256": b64url_encode(hashlib.sha256(b64url_decode(NOTE)).digest()),
        "signed_at": "2026-11-21T09:00:00Z",
    }
    assert keys.verify(KEYS[LEGAL].sig_public, message, b64url_decode(STATUS["signature"]))


def test_a_status_without_a_note_or_signature() -> None:
    plain = {"recipient": SHELTER} | sign_status(
        referral_id=REFERRAL, recipient=SHELTER, status="received", reason="intake.full",
        note=None, signed_at="2026-11-21T09:00:00Z", sig_seed=KEYS[SHELTER].sig_seed)
    verify_status(plain, referral_id=REFERRAL, sig_public=KEYS[SHELTER].sig_public)
    initial = {"recipient": SHELTER, "status": "requested", "reason": None, "note": None,
               "signed_at": None, "signature": None}
    with refused("bad-signature"):
        verify_status(initial, referral_id=REFERRAL, sig_public=KEYS[SHELTER].sig_public)


REWRITES: dict[str, list[Any]] = {
    "recipient": [SHELTER, POLICE, None, 1],
    "status": ["rejected", "completed", "requested", "accepted ", None],
    "reason": ["intake.full", "", "x", "Upper"],
    "note": [None, seal_note("Accepted", KEYS[SENDER].enc_public), NOTE[:-2], ""],
    "signed_at": ["2026-11-21T09:00:01Z", "2026-11-21T09:00:00.0Z", "2026-11-21T09:00:00+00:00"],
    "signature": [None, "", STATUS["signature"][:-1] + "A"],
}


@PROPERTY
@given(data=st.data())
def test_a_status_with_any_member_rewritten_fails_verification(data: st.DataObject) -> None:
    member = data.draw(st.sampled_from(sorted(REWRITES)))
    value = data.draw(st.sampled_from(REWRITES[member]) | st.text(max_size=30))
    if value == STATUS[member]:
        return
    with refused("bad-signature"):
        verify_status(STATUS | {member: value}, referral_id=REFERRAL,
                      sig_public=KEYS[LEGAL].sig_public)


@PROPERTY
@given(position=st.integers(min_value=0, max_value=63), mask=st.integers(1, 255))
def test_a_status_under_another_referral_key_or_signature_fails(position: int, mask: int) -> None:
    with refused("bad-signature"):
        verify_status(STATUS, referral_id=str(uuid.uuid4()), sig_public=KEYS[LEGAL].sig_public)
    with refused("bad-signature"):
        verify_status(STATUS, referral_id=REFERRAL, sig_public=KEYS[SHELTER].sig_public)
    with refused("bad-signature"):
        verify_status(STATUS | {"signature": flip_b64(STATUS["signature"], position, mask)},
                      referral_id=REFERRAL, sig_public=KEYS[LEGAL].sig_public)


def test_a_note_opens_for_the_sender_only() -> None:
    assert open_note(NOTE, KEYS[SENDER].enc_private) == "Accepted; intake Tuesday 10:00 ✔"
    with refused("decrypt-failed"):
        open_note(NOTE, KEYS[LEGAL].enc_private)
    with refused("decrypt-failed"):
        open_note(flip_b64(NOTE, 60, 1), KEYS[SENDER].enc_private)
    with refused("malformed"):
        open_note(NOTE + "=", KEYS[SENDER].enc_private)
    with refused("decrypt-failed"):
        open_note(seal_note("x", KEYS[SENDER].enc_public)[:-2], KEYS[SENDER].enc_private)
