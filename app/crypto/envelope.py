"""Envelope v1: field-level end-to-end encryption of a referral.

The wire format is DESIGN.md, "Envelope v1" and "Wire format"; third-party
clients implement it from that page and from ``tests/vectors/README.md``.
Points that page leaves to the implementation are fixed here:

* ``ciphertext_sha256`` is SHA-256 over the raw bytes ``nonce || ciphertext``
  (the base64url-decoded ``ciphertexts[field]``), and ``wrapped_key_sha256``
  is SHA-256 over the raw 80-byte sealed box; both travel as base64url.
* ``sender_kid`` is the kid of the sender's Ed25519 (signing) key; a grant's
  ``kid`` is the kid of the recipient's X25519 (encryption) key.
* ``referral_id`` is a UUID in canonical lowercase hyphenated form, because it
  is part of every AAD and commitment input and must have one spelling.
* The size limit of a field is on its plaintext: decoded ciphertext length
  minus the 24-byte nonce and the 16-byte Poly1305 tag.
* This SDK orders ``grants`` by (field, recipient) in code-point order and
  appends new recipients at the end of ``recipients``; the server does not
  require any order, only that (field, recipient) pairs are unique.
* A non-sender grant's ``expires_at`` must be later than ``created_at``.

Three actors, three entry points:

* the sender's SDK builds a body with :func:`seal_envelope` and later widens
  consent with :func:`add_grants`;
* the server, which holds no key, checks a body with :func:`check_envelope`
  and a grant update with :func:`check_grant_update`;
* a recipient (or the sender) decrypts with :func:`open_envelope`, which
  verifies the signature, every hash and every key commitment first.

Every failure is an :class:`EnvelopeError` whose ``code`` is one of
:data:`ERROR_CODES`; nothing here returns partial results or logs content.
A key argument that is not 32 bytes raises :class:`app.crypto.keys.InvalidKeyError`
instead: that is the caller's bug, not a property of the envelope.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.secret

from app.crypto import keys
from app.crypto.canonical import CanonicalizationError, canonical_json
from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode

__all__ = [
    "ERROR_CODES",
    "FIELD_NAME_RE",
    "PURPOSES",
    "SENDER_PURPOSE",
    "STANDARD_FIELDS",
    "URGENCIES",
    "VERSION",
    "Consent",
    "EnvelopeError",
    "add_grants",
    "check_envelope",
    "check_grant_update",
    "manifest_signing_input",
    "open_envelope",
    "open_note",
    "seal_envelope",
    "seal_note",
    "sign_manifest",
    "verify_manifest",
]

VERSION = 1
STANDARD_FIELDS = frozenset(
    {
        "full_name",
        "date_of_birth",
        "contact",
        "language",
        "narrative",
        "immigration_status",
        "medical_needs",
        "safety_concerns",
    }
)
FIELD_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""Valid field names. Always apply with ``fullmatch`` (``$`` alone admits a trailing newline)."""
PURPOSES = frozenset({"service_provision", "investigation", "prosecution", "safety_planning"})
SENDER_PURPOSE = "sender"
URGENCIES = frozenset({"routine", "urgent", "emergency"})

ERROR_CODES = frozenset(
    {
        "malformed",  # wrong shape, type, missing/unknown member, duplicate entry
        "unsupported-version",  # manifest.v is not 1
        "bad-encoding",  # binary value not strict base64url, or wrong length
        "bad-signature",  # manifest signature does not verify
        "kid-mismatch",  # a key id does not match the key supplied
        "invalid-field",  # field name or value not acceptable
        "invalid-recipient",  # recipients list or a grant's recipient not acceptable
        "invalid-consent",  # purpose, expires_at or release_ref not acceptable
        "invalid-metadata",  # metadata not acceptable
        "field-too-large",
        "too-many-fields",
        "too-many-recipients",
        "hash-mismatch",  # a ciphertext or wrapped key differs from its signed hash
        "consent-mismatch",  # wrapped keys and grants do not match one to one
        "missing-sender-copy",  # a field has no sender grant
        "manifest-changed",  # a grant update alters more than grants/recipients
        "bad-commitment",  # an unwrapped key is not the committed field key
        "decrypt-failed",  # a sealed box or a field ciphertext does not open
    }
)

NONCE_SIZE = 24
TAG_SIZE = 16
FIELD_KEY_SIZE = 32
WRAPPED_KEY_SIZE = FIELD_KEY_SIZE + keys.SEALED_BOX_OVERHEAD
HASH_SIZE = 32
KID_SIZE = 16
MAX_AGENCY_ID_LENGTH = 255
MAX_RELEASE_REF_LENGTH = 512

AAD_PREFIX = "refgate/v1|"
COMMIT_PREFIX = "refgate/v1/commit|"
MANIFEST_SIGNING_PREFIX = b"refgate/v1/manifest\n"

_MANIFEST_MEMBERS = frozenset(
    {
        "v",
        "referral_id",
        "sender_agency",
        "sender_kid",
        "created_at",
        "metadata",
        "recipients",
        "fields",
        "grants",
    }
)
_FIELD_MEMBERS = frozenset({"ciphertext_sha256", "commitment"})
_GRANT_MEMBERS = frozenset(
    {"field", "recipient", "kid", "wrapped_key_sha256", "purpose", "expires_at", "release_ref"}
)
_WRAPPED_KEY_MEMBERS = frozenset({"field", "recipient", "kid", "wrapped_key"})
_BODY_MEMBERS = frozenset({"manifest", "signature", "ciphertexts", "wrapped_keys"})
_GRANT_BODY_MEMBERS = frozenset({"manifest", "signature", "wrapped_keys"})
# ASCII digits only: \d would also accept other scripts' digits.
_TIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?Z"
)


class EnvelopeError(ValueError):
    """An envelope, grant update or note is refused.

    ``code`` is a stable slug from :data:`ERROR_CODES` (the server maps it to
    a problem+json type); the message is for humans and never contains field
    content or key material.
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown envelope error code {code!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Consent:
    """A survivor's consent to release one field to one recipient agency.

    ``recipient_kid`` must be the kid of ``recipient_enc_public`` (checked when
    used); ``expires_at`` is RFC 3339 UTC with ``Z``; ``release_ref`` is an
    opaque reference to the signed release form.
    """

    field: str
    recipient: str
    recipient_kid: str
    recipient_enc_public: bytes
    purpose: str
    expires_at: str
    release_ref: str | None = None


# --------------------------------------------------------------------------
# primitives


def _aad(referral_id: str, field: str) -> bytes:
    return (AAD_PREFIX + referral_id + "|" + field).encode("utf-8")


def _commitment(field_key: bytes, referral_id: str, field: str) -> bytes:
    message = (COMMIT_PREFIX + referral_id + "|" + field).encode("utf-8")
    return nacl.hash.blake2b(
        message, digest_size=HASH_SIZE, key=field_key, encoder=nacl.encoding.RawEncoder
    )


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _encrypt(field_key: bytes, nonce: bytes, referral_id: str, field: str, text: str) -> bytes:
    try:
        plaintext = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EnvelopeError("invalid-field", f"value of {field!r} is not valid Unicode") from exc
    box = nacl.secret.Aead(field_key)
    return bytes(box.encrypt(plaintext, _aad(referral_id, field), nonce))


def _decrypt(field_key: bytes, blob: bytes, referral_id: str, field: str) -> str:
    box = nacl.secret.Aead(field_key)
    try:
        plaintext = box.decrypt(blob, _aad(referral_id, field))
    except nacl.exceptions.CryptoError as exc:
        raise EnvelopeError("decrypt-failed", f"ciphertext of {field!r} does not open") from exc
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError("decrypt-failed", f"value of {field!r} is not UTF-8") from exc


# --------------------------------------------------------------------------
# shape checks (each raises EnvelopeError)


def _show(value: object) -> str:
    """A bounded rendering of client-supplied input for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _object(value: object, what: str, members: frozenset[str] | None = None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise EnvelopeError("malformed", f"{what} must be a JSON object")
    if members is not None and set(value) != members:
        missing = sorted(members - set(value))
        unknown = [_show(name) for name in sorted(set(value) - members)[:5]]
        raise EnvelopeError(
            "malformed", f"{what}: missing members {missing}, unknown members {unknown}"
        )
    return value


def _array(value: object, what: str) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise EnvelopeError("malformed", f"{what} must be a JSON array")
    return value


def _string(value: object, what: str, code: str = "malformed") -> str:
    if not isinstance(value, str):
        raise EnvelopeError(code, f"{what} must be a string")
    return value


def _binary(value: object, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError("bad-encoding", f"{what} must be a base64url string")
    try:
        return b64url_decode(value, length=length)
    except EncodingError as exc:
        raise EnvelopeError("bad-encoding", f"{what}: {exc}") from exc


def _kid(value: object, what: str) -> str:
    _binary(value, what, KID_SIZE)
    return str(value)


def _agency(value: object, what: str) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_AGENCY_ID_LENGTH
        or not value.isprintable()
    ):
        raise EnvelopeError(
            "invalid-recipient",
            f"{what} must be a printable agency id of 1 to {MAX_AGENCY_ID_LENGTH} characters",
        )
    return value


def _referral_id(value: object) -> str:
    text = _string(value, "manifest.referral_id")
    try:
        canonical = str(uuid.UUID(text))
    except ValueError:
        canonical = ""
    if canonical != text:
        raise EnvelopeError("malformed", "manifest.referral_id must be a lowercase hyphenated UUID")
    return text


def _time(value: object, what: str, code: str = "malformed") -> tuple[datetime, int]:
    """Parse RFC 3339 UTC ``...Z``; returns a sortable (seconds, nanoseconds) pair."""
    match = _TIME_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise EnvelopeError(code, f"{what} must be an RFC 3339 UTC time ending in Z")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        moment = datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise EnvelopeError(code, f"{what} is not a valid date and time") from exc
    return moment, int((match.group(7) or "").ljust(9, "0"))


def _field_name(value: object) -> str:
    if not isinstance(value, str) or FIELD_NAME_RE.fullmatch(value) is None:
        raise EnvelopeError(
            "invalid-field", f"field name {_show(value)} must match {FIELD_NAME_RE.pattern}"
        )
    return value


def _metadata(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise EnvelopeError("invalid-metadata", "manifest.metadata must be a JSON object")
    urgency = value.get("urgency")
    if "urgency" in value and not (isinstance(urgency, str) and urgency in URGENCIES):
        raise EnvelopeError(
            "invalid-metadata", f"metadata.urgency must be one of {sorted(URGENCIES)}"
        )
    services = value.get("services")
    if "services" in value and not (
        isinstance(services, list) and all(isinstance(s, str) and s for s in services)
    ):
        raise EnvelopeError("invalid-metadata", "metadata.services must be a list of strings")
    if value.get("case_ref") is not None and not isinstance(value["case_ref"], str):
        raise EnvelopeError("invalid-metadata", "metadata.case_ref must be a string")
    return value


# --------------------------------------------------------------------------
# the manifest


@dataclass(frozen=True)
class _Grant:
    field: str
    recipient: str
    kid: str
    wrapped_key_sha256: bytes
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class _Manifest:
    referral_id: str
    sender_agency: str
    recipients: tuple[str, ...]
    fields: Mapping[str, tuple[bytes, bytes]]  # name -> (ciphertext_sha256, commitment)
    grants: Mapping[tuple[str, str], _Grant]  # (field, recipient) -> grant
    raw: Mapping[str, Any]


def _parse_grant(value: object, index: int) -> _Grant:
    what = f"manifest.grants[{index}]"
    grant = _object(value, what, _GRANT_MEMBERS)
    field = _field_name(grant["field"])
    recipient = _agency(grant["recipient"], f"{what}.recipient")
    kid = _kid(grant["kid"], f"{what}.kid")
    digest = _binary(grant["wrapped_key_sha256"], f"{what}.wrapped_key_sha256", HASH_SIZE)
    release_ref = grant["release_ref"]
    if release_ref is not None and not (
        isinstance(release_ref, str) and 1 <= len(release_ref) <= MAX_RELEASE_REF_LENGTH
    ):
        raise EnvelopeError(
            "invalid-consent",
            f"{what}.release_ref must be null or 1 to {MAX_RELEASE_REF_LENGTH} characters",
        )
    return _Grant(field, recipient, kid, digest, grant)


def _parse_manifest(value: object) -> _Manifest:
    """Check everything about a manifest that needs neither keys nor ciphertexts."""
    manifest = _object(value, "manifest")
    version = manifest.get("v")
    if type(version) is not int or version != VERSION:
        raise EnvelopeError("unsupported-version", f"manifest.v must be {VERSION}")
    _object(manifest, "manifest", _MANIFEST_MEMBERS)
    referral_id = _referral_id(manifest["referral_id"])
    sender = _agency(manifest["sender_agency"], "manifest.sender_agency")
    _kid(manifest["sender_kid"], "manifest.sender_kid")
    created = _time(manifest["created_at"], "manifest.created_at")
    _metadata(manifest["metadata"])

    recipients = tuple(
        _agency(r, f"manifest.recipients[{i}]")
        for i, r in enumerate(_array(manifest["recipients"], "manifest.recipients"))
    )
    if not recipients:
        raise EnvelopeError("invalid-recipient", "manifest.recipients must not be empty")
    if len(set(recipients)) != len(recipients):
        raise EnvelopeError("invalid-recipient", "manifest.recipients has duplicates")
    if sender in recipients:
        raise EnvelopeError("invalid-recipient", "the sender cannot be one of its recipients")

    fields: dict[str, tuple[bytes, bytes]] = {}
    for name, entry in _object(manifest["fields"], "manifest.fields").items():
        what = f"manifest.fields.{_field_name(name)}"
        entry = _object(entry, what, _FIELD_MEMBERS)
        fields[name] = (
            _binary(entry["ciphertext_sha256"], f"{what}.ciphertext_sha256", HASH_SIZE),
            _binary(entry["commitment"], f"{what}.commitment", HASH_SIZE),
        )
    if not fields:
        raise EnvelopeError("invalid-field", "manifest.fields must not be empty")

    grants: dict[tuple[str, str], _Grant] = {}
    for index, item in enumerate(_array(manifest["grants"], "manifest.grants")):
        grant = _parse_grant(item, index)
        where = f"grant ({grant.field}, {grant.recipient})"
        if grant.field not in fields:
            raise EnvelopeError("consent-mismatch", f"{where} names a field with no ciphertext")
        if (grant.field, grant.recipient) in grants:
            raise EnvelopeError("malformed", f"{where} appears twice")
        if grant.recipient == sender:
            if grant.raw["purpose"] != SENDER_PURPOSE or grant.raw["expires_at"] is not None:
                raise EnvelopeError(
                    "missing-sender-copy",
                    f"{where}: the sender's grants have purpose 'sender' and expires_at null",
                )
            if grant.raw["release_ref"] is not None:
                raise EnvelopeError("invalid-consent", f"{where}: release_ref must be null")
        else:
            if grant.recipient not in recipients:
                raise EnvelopeError("invalid-recipient", f"{where}: recipient is not listed")
            purpose = grant.raw["purpose"]
            if not (isinstance(purpose, str) and purpose in PURPOSES):
                raise EnvelopeError(
                    "invalid-consent", f"{where}: purpose must be one of {sorted(PURPOSES)}"
                )
            expires = _time(grant.raw["expires_at"], f"{where}.expires_at", "invalid-consent")
            if expires <= created:
                raise EnvelopeError(
                    "invalid-consent", f"{where}: expires_at is not after created_at"
                )
        grants[(grant.field, grant.recipient)] = grant
    for name in fields:
        if (name, sender) not in grants:
            raise EnvelopeError("missing-sender-copy", f"no sender grant for field {name!r}")

    return _Manifest(referral_id, sender, recipients, fields, grants, manifest)


def _canonical(value: object) -> bytes:
    try:
        return canonical_json(value)
    except CanonicalizationError as exc:
        raise EnvelopeError("malformed", f"not canonicalizable JSON: {exc}") from exc


def manifest_signing_input(manifest: Mapping[str, object]) -> bytes:
    """The exact bytes signed: ``b"refgate/v1/manifest\\n"`` + RFC 8785 bytes of ``manifest``.

    Raises :class:`EnvelopeError` ("malformed") if the manifest has no
    canonical JSON form. Does not otherwise validate the manifest.
    """
    return MANIFEST_SIGNING_PREFIX + _canonical(manifest)


def sign_manifest(manifest: Mapping[str, object], sig_seed: bytes) -> str:
    """Ed25519 signature (base64url) of :func:`manifest_signing_input`.

    Deterministic: the same manifest and seed always give the same string.
    """
    return b64url_encode(keys.sign(sig_seed, manifest_signing_input(manifest)))


def verify_manifest(manifest: Mapping[str, object], signature: str, sig_public: bytes) -> None:
    """Return only if ``signature`` is the Ed25519 signature of ``manifest`` by ``sig_public``.

    Raises :class:`EnvelopeError`: "bad-encoding" if the signature is not 64
    bytes of strict base64url, "malformed" if the manifest cannot be
    canonicalized, "bad-signature" otherwise.
    """
    _verified_canonical(manifest, signature, sig_public)


def _verified_canonical(manifest: Mapping[str, object], signature: str, sig_public: bytes) -> bytes:
    """:func:`verify_manifest`, returning the RFC 8785 bytes of ``manifest`` it verified."""
    raw = _binary(signature, "signature", keys.SIGNATURE_SIZE)
    canonical = _canonical(manifest)
    if not keys.verify(sig_public, MANIFEST_SIGNING_PREFIX + canonical, raw):
        raise EnvelopeError("bad-signature", "manifest signature does not verify")
    return canonical


def _check_signed_manifest(
    manifest_value: object, signature: object, sender_sig_public: bytes, *, verify_first: bool
) -> tuple[_Manifest, bytes]:
    """Parse and authenticate a manifest, in the order the caller's trust model wants.

    Returns the parsed manifest and its RFC 8785 bytes (the signed ones).
    """
    manifest = _object(manifest_value, "manifest")
    parsed = None if verify_first else _parse_manifest(manifest)
    if manifest.get("sender_kid") != keys.kid(sender_sig_public):
        raise EnvelopeError(
            "kid-mismatch", "manifest.sender_kid is not the kid of the sender's signing key"
        )
    canonical = _verified_canonical(
        manifest, _string(signature, "signature", "bad-encoding"), sender_sig_public
    )
    return (parsed if parsed is not None else _parse_manifest(manifest)), canonical


# --------------------------------------------------------------------------
# wrapped keys


@dataclass(frozen=True)
class _Wrapped:
    field: str
    recipient: str
    kid: str
    data: bytes


def _parse_wrapped_keys(value: object) -> list[_Wrapped]:
    out: list[_Wrapped] = []
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(_array(value, "wrapped_keys")):
        what = f"wrapped_keys[{index}]"
        entry = _object(item, what, _WRAPPED_KEY_MEMBERS)
        wrapped = _Wrapped(
            field=_field_name(entry["field"]),
            recipient=_agency(entry["recipient"], f"{what}.recipient"),
            kid=_kid(entry["kid"], f"{what}.kid"),
            data=_binary(entry["wrapped_key"], f"{what}.wrapped_key", WRAPPED_KEY_SIZE),
        )
        if (wrapped.field, wrapped.recipient) in seen:
            raise EnvelopeError(
                "malformed",
                f"{what}: a second wrapped key for ({wrapped.field}, {wrapped.recipient})",
            )
        seen.add((wrapped.field, wrapped.recipient))
        out.append(wrapped)
    return out


def _grant_of(wrapped: _Wrapped, grants: Mapping[tuple[str, str], _Grant]) -> _Grant:
    """The grant a wrapped key belongs to; its kid and hash must match."""
    where = f"wrapped key ({wrapped.field}, {wrapped.recipient})"
    grant = grants.get((wrapped.field, wrapped.recipient))
    if grant is None:
        raise EnvelopeError("consent-mismatch", f"{where} has no grant in the manifest")
    if grant.kid != wrapped.kid:
        raise EnvelopeError("consent-mismatch", f"{where}: kid differs from its grant")
    if not _equal(_sha256(wrapped.data), grant.wrapped_key_sha256):
        raise EnvelopeError("hash-mismatch", f"{where}: sha256 differs from its grant")
    return grant


def _match_one_to_one(
    wrapped_keys: Sequence[_Wrapped], grants: Mapping[tuple[str, str], _Grant]
) -> None:
    """Every grant has exactly one wrapped key and every wrapped key exactly one grant."""
    for wrapped in wrapped_keys:
        _grant_of(wrapped, grants)
    covered = {(w.field, w.recipient) for w in wrapped_keys}
    for field, recipient in grants:
        if (field, recipient) not in covered:
            raise EnvelopeError(
                "consent-mismatch", f"grant ({field}, {recipient}) has no wrapped key"
            )


def _unwrap(wrapped: _Wrapped, manifest: _Manifest, enc_private: bytes, own_kid: str) -> bytes:
    """Open one wrapped key addressed to us and check it against the key commitment."""
    where = f"wrapped key ({wrapped.field}, {wrapped.recipient})"
    _grant_of(wrapped, manifest.grants)
    if wrapped.kid != own_kid:
        raise EnvelopeError("kid-mismatch", f"{where} is for another encryption key")
    try:
        field_key = keys.unseal(enc_private, wrapped.data)
    except keys.DecryptionError as exc:
        raise EnvelopeError("decrypt-failed", f"{where} does not open") from exc
    expected = manifest.fields[wrapped.field][1]
    if len(field_key) != FIELD_KEY_SIZE or not _equal(
        _commitment(field_key, manifest.referral_id, wrapped.field), expected
    ):
        raise EnvelopeError("bad-commitment", f"{where} does not carry the committed field key")
    return field_key


def _own_field_keys(
    envelope: Mapping[str, Any],
    agency_id: str,
    enc_private: bytes,
    sender_sig_public: bytes,
) -> tuple[_Manifest, dict[str, bytes]]:
    """Authenticate the manifest, then unwrap and commitment-check our field keys."""
    envelope = _object(envelope, "envelope")
    for member in ("manifest", "signature", "wrapped_keys"):
        if member not in envelope:
            raise EnvelopeError("malformed", f"envelope has no {member!r}")
    manifest, _ = _check_signed_manifest(
        envelope["manifest"], envelope["signature"], sender_sig_public, verify_first=True
    )
    own_kid = keys.kid(keys.enc_public_from_private(enc_private))
    field_keys: dict[str, bytes] = {}
    for wrapped in _parse_wrapped_keys(envelope["wrapped_keys"]):
        if wrapped.recipient == agency_id:
            field_keys[wrapped.field] = _unwrap(wrapped, manifest, enc_private, own_kid)
    return manifest, field_keys


# --------------------------------------------------------------------------
# consents -> grants


def _seal_grant(
    consent: Consent, field_key: bytes, *, sender_agency: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(grant, wrapped key entry) for one consent."""
    where = f"consent ({consent.field}, {consent.recipient})"
    if consent.recipient == sender_agency:
        raise EnvelopeError("invalid-recipient", f"{where}: the sender already holds every field")
    try:
        actual_kid = keys.kid(consent.recipient_enc_public)
        wrapped = keys.seal(consent.recipient_enc_public, field_key)
    except keys.InvalidKeyError as exc:
        raise EnvelopeError("invalid-recipient", f"{where}: {exc}") from exc
    if actual_kid != consent.recipient_kid:
        raise EnvelopeError("kid-mismatch", f"{where}: recipient_kid is not the kid of the key")
    entry = _wrapped_dict(consent.field, consent.recipient, actual_kid, wrapped)
    return _grant_dict(consent, wrapped), entry


def _grant_dict(consent: Consent, wrapped: bytes) -> dict[str, Any]:
    return {
        "field": consent.field,
        "recipient": consent.recipient,
        "kid": consent.recipient_kid,
        "wrapped_key_sha256": b64url_encode(_sha256(wrapped)),
        "purpose": consent.purpose,
        "expires_at": consent.expires_at,
        "release_ref": consent.release_ref,
    }


def _wrapped_dict(field: str, recipient: str, kid: str, wrapped: bytes) -> dict[str, Any]:
    return {
        "field": field,
        "recipient": recipient,
        "kid": kid,
        "wrapped_key": b64url_encode(wrapped),
    }


def _sender_grant(
    field: str, field_key: bytes, sender_agency: str, sender_enc_public: bytes
) -> tuple[dict[str, Any], dict[str, Any]]:
    sender_enc_kid = keys.kid(sender_enc_public)
    wrapped = keys.seal(sender_enc_public, field_key)
    grant = {
        "field": field,
        "recipient": sender_agency,
        "kid": sender_enc_kid,
        "wrapped_key_sha256": b64url_encode(_sha256(wrapped)),
        "purpose": SENDER_PURPOSE,
        "expires_at": None,
        "release_ref": None,
    }
    return grant, _wrapped_dict(field, sender_agency, sender_enc_kid, wrapped)


def _grant_order(entry: Mapping[str, Any]) -> tuple[str, str]:
    return (entry["field"], entry["recipient"])


def _check_consent_targets(
    consents: Sequence[Consent], field_names: Mapping[str, object] | frozenset[str]
) -> None:
    seen: set[tuple[str, str]] = set()
    for consent in consents:
        if not (
            isinstance(consent, Consent)
            and isinstance(consent.field, str)
            and isinstance(consent.recipient, str)
        ):
            raise EnvelopeError("malformed", "consents must be Consent instances")
        pair = (consent.field, consent.recipient)
        if consent.field not in field_names:
            raise EnvelopeError("consent-mismatch", f"consent {pair} names an unknown field")
        if pair in seen:
            raise EnvelopeError("malformed", f"consent {pair} appears twice")
        seen.add(pair)


# --------------------------------------------------------------------------
# sender side


def seal_envelope(
    *,
    referral_id: str,
    sender_agency: str,
    sender_sig_seed: bytes,
    sender_enc_public: bytes,
    recipients: Sequence[str],
    fields: Mapping[str, str],
    consents: Sequence[Consent],
    metadata: Mapping[str, object],
    created_at: str,
    unsafe_field_keys: Mapping[str, bytes] | None = None,
    unsafe_nonces: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """Encrypt ``fields`` and return the ``POST /v1/referrals`` body.

    The body is ``{"manifest", "signature", "ciphertexts", "wrapped_keys"}``.
    Each field gets a fresh random 32-byte key and 24-byte nonce; its key is
    wrapped for the sender (purpose "sender", no expiry) and for every consent
    naming it, and for nobody else. The result is guaranteed to pass
    :func:`check_envelope` (size limits aside) for ``sender_sig_seed``'s
    public key: it is checked before it is returned.

    ``unsafe_field_keys`` / ``unsafe_nonces`` fix keys and nonces for test
    vectors only; reusing a nonce under a key breaks confidentiality.

    Raises :class:`EnvelopeError` for an empty recipient list, the sender
    among its recipients, duplicate recipients, no fields, an invalid field
    name, a consent for an unknown field or an unlisted recipient, a duplicate
    (field, recipient) consent, a purpose outside :data:`PURPOSES`, a missing
    or malformed ``expires_at``, or a recipient kid that is not the kid of its
    key.
    """
    if not isinstance(fields, Mapping):
        raise EnvelopeError("malformed", "fields must be a mapping of name to text")
    for name, value in fields.items():
        _field_name(name)
        if not isinstance(value, str):
            raise EnvelopeError("invalid-field", f"value of {name!r} must be a string")
    _check_consent_targets(consents, fields)
    fixed_keys = _unsafe_values(unsafe_field_keys, fields, FIELD_KEY_SIZE, "unsafe_field_keys")
    fixed_nonces = _unsafe_values(unsafe_nonces, fields, NONCE_SIZE, "unsafe_nonces")
    sig_public = keys.sig_public_from_seed(sender_sig_seed)

    ciphertexts: dict[str, str] = {}
    manifest_fields: dict[str, dict[str, str]] = {}
    grants: list[dict[str, Any]] = []
    wrapped_keys: list[dict[str, Any]] = []
    for name, text in fields.items():
        field_key = fixed_keys.get(name) or os.urandom(FIELD_KEY_SIZE)
        nonce = fixed_nonces.get(name) or os.urandom(NONCE_SIZE)
        blob = _encrypt(field_key, nonce, referral_id, name, text)
        ciphertexts[name] = b64url_encode(blob)
        manifest_fields[name] = {
            "ciphertext_sha256": b64url_encode(_sha256(blob)),
            "commitment": b64url_encode(_commitment(field_key, referral_id, name)),
        }
        pairs = [_sender_grant(name, field_key, sender_agency, sender_enc_public)]
        pairs += [
            _seal_grant(c, field_key, sender_agency=sender_agency)
            for c in consents
            if c.field == name
        ]
        for grant, wrapped in pairs:
            grants.append(grant)
            wrapped_keys.append(wrapped)

    grants.sort(key=_grant_order)
    wrapped_keys.sort(key=_grant_order)
    manifest: dict[str, Any] = {
        "v": VERSION,
        "referral_id": referral_id,
        "sender_agency": sender_agency,
        "sender_kid": keys.kid(sig_public),
        "created_at": created_at,
        "metadata": copy.deepcopy(dict(metadata)) if isinstance(metadata, Mapping) else metadata,
        "recipients": list(recipients) if isinstance(recipients, list | tuple) else recipients,
        "fields": manifest_fields,
        "grants": grants,
    }
    body = {
        "manifest": manifest,
        "signature": sign_manifest(manifest, sender_sig_seed),
        "ciphertexts": ciphertexts,
        "wrapped_keys": wrapped_keys,
    }
    _check_body(body, sig_public, max_fields=None, max_field_bytes=None, max_recipients=None)
    return body


def _unsafe_values(
    values: Mapping[str, bytes] | None, fields: Mapping[str, str], size: int, what: str
) -> Mapping[str, bytes]:
    if values is None:
        return {}
    for name, value in values.items():
        if name not in fields or not isinstance(value, bytes) or len(value) != size:
            raise EnvelopeError(
                "malformed", f"{what}[{name!r}] must be {size} bytes for a known field"
            )
    return values


def add_grants(
    envelope: Mapping[str, Any],
    *,
    sender_agency: str,
    sender_sig_seed: bytes,
    sender_enc_private: bytes,
    consents: Sequence[Consent],
) -> dict[str, Any]:
    """Widen consent: return the ``POST /v1/referrals/{id}/grants`` body.

    ``envelope`` is the referral as its sender reads it (manifest, signature,
    the sender's own wrapped keys; ciphertexts are not needed). The manifest
    signature is verified with ``sender_sig_seed``'s public key and the
    sender's field keys are unwrapped and checked against their commitments
    before anything is wrapped for anyone, so a server that altered the
    referral cannot get a key wrapped for it.

    The result is ``{"manifest", "signature", "wrapped_keys"}``: the manifest
    equals the old one except that ``grants`` gains one entry per consent (an
    existing (field, recipient) grant is replaced, e.g. to re-grant after
    revocation or expiry; order (field, recipient)) and ``recipients`` gains
    newly named agencies at its end; ``wrapped_keys`` holds only the new keys.
    It is guaranteed to pass :func:`check_grant_update` against the old
    manifest. A change of the sender's signing key since the referral was
    created is refused ("kid-mismatch"): v1 grant updates keep ``sender_kid``.
    """
    sig_public = keys.sig_public_from_seed(sender_sig_seed)
    manifest, field_keys = _own_field_keys(envelope, sender_agency, sender_enc_private, sig_public)
    if manifest.sender_agency != sender_agency:
        raise EnvelopeError("malformed", "this referral was sent by another agency")
    if not consents:
        raise EnvelopeError("malformed", "no consents to add")
    _check_consent_targets(consents, frozenset(manifest.fields))

    recipients = list(manifest.recipients)
    grants = {key: dict(grant.raw) for key, grant in manifest.grants.items()}
    new_wrapped: list[dict[str, Any]] = []
    for consent in consents:
        field_key = field_keys.get(consent.field)
        if field_key is None:
            raise EnvelopeError(
                "missing-sender-copy", f"the sender's wrapped key for {consent.field!r} is absent"
            )
        grant, wrapped = _seal_grant(consent, field_key, sender_agency=sender_agency)
        grants[(consent.field, consent.recipient)] = grant
        new_wrapped.append(wrapped)
        if consent.recipient not in recipients:
            recipients.append(consent.recipient)

    new_manifest = copy.deepcopy(dict(manifest.raw))
    new_manifest["recipients"] = recipients
    new_manifest["grants"] = [grants[key] for key in sorted(grants)]
    body = {
        "manifest": new_manifest,
        "signature": sign_manifest(new_manifest, sender_sig_seed),
        "wrapped_keys": sorted(new_wrapped, key=_grant_order),
    }
    check_grant_update(manifest.raw, body, sender_sig_public=sig_public)
    return body


# --------------------------------------------------------------------------
# server side


def check_envelope(
    envelope: Mapping[str, Any],
    *,
    sender_sig_public: bytes,
    max_fields: int = 64,
    max_field_bytes: int = 65536,
    max_recipients: int = 64,
) -> bytes:
    """Return only if a ``POST /v1/referrals`` body is well formed and signed.

    What a server can check without any private key: members exactly
    ``manifest``, ``signature``, ``ciphertexts``, ``wrapped_keys``; manifest
    v1 with every member of the right type; ``referral_id`` a lowercase UUID;
    field names valid, at most ``max_fields`` fields, each plaintext at most
    ``max_field_bytes`` bytes (decoded ciphertext length minus 24-byte nonce
    and 16-byte tag); at most ``max_recipients`` recipients, unique, not the
    sender; ``sender_kid`` is the kid of ``sender_sig_public`` and the
    signature verifies; ciphertexts exist for exactly the manifest's fields and
    hash to the signed ``ciphertext_sha256``; wrapped keys and grants match one
    to one on (field, recipient, kid) and ``wrapped_key_sha256``; the sender
    holds a "sender" grant with null expiry for every field; other grants name
    listed recipients, a purpose from :data:`PURPOSES` and an RFC 3339 ``Z``
    ``expires_at`` after ``created_at``; ``metadata.urgency`` (if present) is
    in :data:`URGENCIES`; every binary value is strict base64url of the right
    length.

    It cannot check that wrapped keys open or match the commitments (only
    recipients can), that the grant kids are the recipients' current keys (the
    caller compares them with its key directory), or times against a clock.
    Raises :class:`EnvelopeError`.

    Returns the RFC 8785 bytes of ``manifest``: exactly the bytes the verified
    signature covers (after the ``refgate/v1/manifest\n`` prefix), so a
    caller that stores the manifest need not canonicalize it again.
    """
    return _check_body(
        envelope,
        sender_sig_public,
        max_fields=max_fields,
        max_field_bytes=max_field_bytes,
        max_recipients=max_recipients,
    )


def _check_body(
    envelope: object,
    sender_sig_public: bytes,
    *,
    max_fields: int | None,
    max_field_bytes: int | None,
    max_recipients: int | None,
) -> bytes:
    body = _object(envelope, "envelope", _BODY_MEMBERS)
    manifest, canonical = _check_signed_manifest(
        body["manifest"], body["signature"], sender_sig_public, verify_first=False
    )
    if max_fields is not None and len(manifest.fields) > max_fields:
        raise EnvelopeError("too-many-fields", f"at most {max_fields} fields")
    if max_recipients is not None and len(manifest.recipients) > max_recipients:
        raise EnvelopeError("too-many-recipients", f"at most {max_recipients} recipients")

    ciphertexts = _object(body["ciphertexts"], "ciphertexts")
    if set(ciphertexts) != set(manifest.fields):
        raise EnvelopeError("malformed", "ciphertexts must cover exactly the manifest's fields")
    for name, (digest, _) in manifest.fields.items():
        blob = _binary(ciphertexts[name], f"ciphertexts.{name}")
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise EnvelopeError("bad-encoding", f"ciphertexts.{name} is shorter than nonce and tag")
        if max_field_bytes is not None and len(blob) - NONCE_SIZE - TAG_SIZE > max_field_bytes:
            raise EnvelopeError("field-too-large", f"{name!r} exceeds {max_field_bytes} bytes")
        if not _equal(_sha256(blob), digest):
            raise EnvelopeError(
                "hash-mismatch", f"ciphertexts.{name} differs from its signed sha256"
            )

    _match_one_to_one(_parse_wrapped_keys(body["wrapped_keys"]), manifest.grants)
    return canonical


def check_grant_update(
    old_manifest: Mapping[str, Any],
    body: Mapping[str, Any],
    *,
    sender_sig_public: bytes,
) -> list[dict[str, Any]]:
    """Check a ``POST /v1/referrals/{id}/grants`` body against the stored manifest.

    Guarantees, on return: the body has exactly ``manifest``, ``signature``,
    ``wrapped_keys``; the new manifest is a valid v1 manifest signed by
    ``sender_sig_public`` (whose kid is ``sender_kid``); every member other
    than ``grants`` and ``recipients`` is identical to the old manifest's;
    no recipient was removed; every old grant is still present, unchanged or
    replaced; at least one grant is new or replaced; and the wrapped keys
    match the new and replaced grants one to one (field, recipient, kid,
    sha256). Returns those new and replaced grants, as they appear in the new
    manifest. Raises :class:`EnvelopeError` ("manifest-changed" for an
    alteration beyond grants and recipients).
    """
    old = _parse_manifest(old_manifest)
    update = _object(body, "grant update", _GRANT_BODY_MEMBERS)
    new, _ = _check_signed_manifest(
        update["manifest"], update["signature"], sender_sig_public, verify_first=False
    )
    for member in sorted(_MANIFEST_MEMBERS - {"grants", "recipients"}):
        if _canonical(old.raw[member]) != _canonical(new.raw[member]):
            raise EnvelopeError("manifest-changed", f"manifest.{member} changed")
    if not set(old.recipients) <= set(new.recipients):
        raise EnvelopeError("manifest-changed", "a recipient was removed")
    for key in old.grants:
        if key not in new.grants:
            raise EnvelopeError("manifest-changed", f"grant {key} was removed")
    changed = {
        key: grant
        for key, grant in new.grants.items()
        if key not in old.grants or _canonical(grant.raw) != _canonical(old.grants[key].raw)
    }
    if not changed:
        raise EnvelopeError("malformed", "the update adds or replaces no grant")
    _match_one_to_one(_parse_wrapped_keys(update["wrapped_keys"]), changed)
    return [dict(grant.raw) for grant in changed.values()]


# --------------------------------------------------------------------------
# recipient side


def open_envelope(
    envelope: Mapping[str, Any],
    *,
    agency_id: str,
    enc_private: bytes,
    sender_sig_public: bytes,
) -> dict[str, str]:
    """Decrypt the fields addressed to ``agency_id`` (a recipient or the sender).

    ``envelope`` is what ``GET /v1/referrals/{id}`` returns: the signed
    manifest intact, possibly only some ciphertexts and only the caller's
    wrapped keys; extra members (``statuses``) are ignored. In order: the
    manifest's ``sender_kid`` must be the kid of ``sender_sig_public`` and its
    signature must verify; the manifest must be a valid v1 manifest; then for
    each wrapped key addressed to ``agency_id``: its grant exists with the same
    kid and ``wrapped_key_sha256``, the kid is that of ``enc_private``'s
    public key, the sealed box opens, the key matches the field's commitment
    (constant-time), the ciphertext is present and matches its signed
    ``ciphertext_sha256``, and it decrypts under AAD
    ``"refgate/v1|" + referral_id + "|" + field``.

    Returns ``{field: plaintext}`` for exactly those fields (empty if nothing
    is addressed to the caller) or raises :class:`EnvelopeError`; it never
    returns part of the fields when another one fails. It does not check
    grant expiry (it has no clock; the server does not serve expired grants).
    """
    manifest, field_keys = _own_field_keys(envelope, agency_id, enc_private, sender_sig_public)
    ciphertexts = _object(envelope.get("ciphertexts", {}), "ciphertexts")
    for name in ciphertexts:
        if name not in manifest.fields:
            raise EnvelopeError("malformed", f"ciphertexts[{_show(name)}] is not in the manifest")
    opened: dict[str, str] = {}
    for name in sorted(field_keys):
        if name not in ciphertexts:
            raise EnvelopeError("malformed", f"ciphertext of {name!r} is missing")
        blob = _binary(ciphertexts[name], f"ciphertexts.{name}")
        if not _equal(_sha256(blob), manifest.fields[name][0]):
            raise EnvelopeError(
                "hash-mismatch", f"ciphertexts.{name} differs from its signed sha256"
            )
        opened[name] = _decrypt(field_keys[name], blob, manifest.referral_id, name)
    return opened


# --------------------------------------------------------------------------
# status notes


def seal_note(text: str, sender_enc_public: bytes) -> str:
    """Seal a status note to the sender's X25519 key; returns base64url.

    Only the holder of the sender's private key can read it (sealed boxes are
    anonymous: the note is authenticated by the API call, not by the box).
    """
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EnvelopeError("malformed", "note is not valid Unicode") from exc
    return b64url_encode(keys.seal(sender_enc_public, data))


def open_note(note: str, enc_private: bytes) -> str:
    """Open a note sealed by :func:`seal_note`.

    Raises :class:`EnvelopeError` ("bad-encoding", "decrypt-failed") unless
    the note was sealed to this key and is unaltered UTF-8.
    """
    data = _binary(note, "note")
    try:
        return keys.unseal(enc_private, data).decode("utf-8")
    except keys.DecryptionError as exc:
        raise EnvelopeError("decrypt-failed", "note does not open with this key") from exc
    except UnicodeDecodeError as exc:
        raise EnvelopeError("decrypt-failed", "note is not UTF-8") from exc
