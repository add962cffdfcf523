"""Envelope v2: field-level end-to-end encryption with selective disclosure.

The wire format is DESIGN.md, "Envelope v2"; its shapes are the models of
:mod:`app.crypto.wire`, and ``tests/vectors/README.md`` fixes the bytes.
The server never sees a field name: names travel inside the ciphertext,
fields are known by opaque ids (``fid``), and everything about fields, grants
and requests is a salted disclosure (RFC 9901 section 4.2) whose digest alone
is signed in the manifest, among decoys. Each caller is served only its own
disclosures, so a recipient learns nothing of fields, grants, requests or
recipients that are not its own.

Points the page leaves to the implementation, fixed here:

* A disclosure built here is base64url of the RFC 8785 bytes of
  ``[salt, type, value]``; any JSON spelling is accepted on input (the digest
  is over the disclosure string as sent), but duplicate object keys are refused.
* Decoy digests are 32 random bytes; the digest list is sorted by code point.
* A non-sender grant's ``expires_at`` must be later than ``created_at``.
* An amendment adds grants and requests, never fields (ciphertexts are fixed at
  creation); it may replace the grant of a (fid, recipient) pair, e.g. to
  re-grant after a revocation or an expiry.

Three actors, three entry points:

* the sender's client builds with :func:`seal_envelope` and :func:`amend`;
* the server, which holds no key, checks with :func:`check_envelope` and
  :func:`check_amendment` (what needs a clock or a directory is the caller's);
* a recipient (or the sender) opens with :func:`open_envelope`, which
  verifies the signature, every digest, hash, kid and key commitment first.

Statuses are signed by the recipient (:func:`sign_status`,
:func:`verify_status`) and notes sealed to the sender (:func:`seal_note`).
Every failure is an :class:`EnvelopeError` whose ``code`` is one of
:data:`ERROR_CODES`; nothing here returns partial results or logs content.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.secret
import pydantic

from app import vocab
from app.crypto import keys
from app.crypto.canonical import CanonicalizationError, canonical_json
from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode
from app.crypto.wire import (
    FIELD_NAME_RE,
    Amendment,
    EnvelopeIn,
    FieldValue,
    GrantValue,
    Manifest,
    RequestValue,
    StatusSigned,
    WrappedKeyIn,
)

__all__ = [
    "ERROR_CODES",
    "STANDARD_FIELDS",
    "VERSION",
    "CheckedAmendment",
    "CheckedReferral",
    "Disclosed",
    "EnvelopeError",
    "Grant",
    "Limits",
    "Opened",
    "Request",
    "amend",
    "check_amendment",
    "check_envelope",
    "disclosure_digest",
    "make_disclosure",
    "manifest_signing_input",
    "open_envelope",
    "open_note",
    "parse_disclosure",
    "seal_envelope",
    "seal_note",
    "sign_status",
    "status_signing_input",
    "verify_status",
]

VERSION = 2
STANDARD_FIELDS = (
    "full_name",
    "date_of_birth",
    "contact",
    "language",
    "narrative",
    "immigration_status",
    "medical_needs",
    "safety_concerns",
)
SENDER_PURPOSE = vocab.SENDER_PURPOSE

ERROR_CODES = frozenset(
    {
        "malformed",  # wrong shape, type, missing/unknown member
        "bad-signature",  # manifest or status signature does not verify
        "kid-mismatch",  # sender_kid is not the signer's, or a wrapped key's kid is not ours
        "bad-disclosure",  # a disclosure does not decode to [salt, type, value] as specified
        "undisclosed-digest",  # a disclosure's digest is not in the manifest
        "duplicate-disclosure",  # two disclosures share a digest, or a pair appears twice
        "field-mismatch",  # ciphertexts and field disclosures do not match one to one
        "consent-mismatch",  # wrapped keys and grant disclosures do not match one to one
        "hash-mismatch",  # a ciphertext or wrapped key differs from its disclosed hash
        "missing-sender-copy",  # a field has no grant to the sender
        "missing-request",  # a recipient with grants has no request
        "missing-grant",  # a request names an agency that holds no grant
        "invalid-consent",  # purpose or times of a grant not acceptable
        "bad-padding",  # digests not sorted, not unique, or not a multiple of 8
        "too-many-fields",
        "too-many-recipients",
        "field-too-large",
        "manifest-changed",  # an amendment alters what it may not
        "bad-commitment",  # an unwrapped key is not the committed field key
        "decrypt-failed",  # a sealed box, a ciphertext or a note does not open
        "invalid-field",  # a decrypted field is not {"name", "value"} with a valid name
    }
)

NONCE_SIZE = 24
TAG_SIZE = 16
FIELD_KEY_SIZE = 32
HASH_SIZE = 32
SALT_SIZE = 16
FID_SIZE = 16
PAD_TO = 8

AAD_PREFIX = "refgate/v2|"
COMMIT_PREFIX = "refgate/v2/commit|"
MANIFEST_PREFIX = b"refgate/v2/manifest\n"
STATUS_PREFIX = b"refgate/v2/status\n"

DisclosureType = Literal["field", "grant", "request"]
RandomSource = Callable[[int], bytes]


class EnvelopeError(ValueError):
    """An envelope, amendment, status or note is refused.

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


# --------------------------------------------------------------------------
# primitives


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _aad(referral_id: str, fid: str) -> bytes:
    return (AAD_PREFIX + referral_id + "|" + fid).encode("ascii")


def commitment(field_key: bytes, referral_id: str, fid: str) -> bytes:
    """BLAKE2b-256 keyed with the field key over ``refgate/v2/commit|<referral>|<fid>``."""
    message = (COMMIT_PREFIX + referral_id + "|" + fid).encode("ascii")
    return nacl.hash.blake2b(
        message, digest_size=HASH_SIZE, key=field_key, encoder=nacl.encoding.RawEncoder
    )


def _canonical(value: object) -> bytes:
    try:
        return canonical_json(value)
    except CanonicalizationError as exc:
        raise EnvelopeError("malformed", f"not canonicalizable JSON: {exc}") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate key")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _first_error(exc: pydantic.ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    return f"{where}: {err['msg']}"


# --------------------------------------------------------------------------
# disclosures


def make_disclosure(salt: bytes, kind: DisclosureType, value: Mapping[str, Any]) -> str:
    """base64url of the RFC 8785 bytes of ``[base64url(salt), kind, value]``."""
    return b64url_encode(_canonical([b64url_encode(salt), kind, dict(value)]))


def disclosure_digest(disclosure: str) -> str:
    """base64url(SHA-256(the ASCII bytes of the disclosure string))."""
    return b64url_encode(_sha256(disclosure.encode("ascii")))


@dataclass(frozen=True)
class Disclosed:
    """A parsed disclosure: the string as sent, its digest, its type and value."""

    disclosure: str
    digest: str
    kind: DisclosureType
    value: FieldValue | GrantValue | RequestValue


_VALUE_MODELS: dict[str, type[FieldValue] | type[GrantValue] | type[RequestValue]] = {
    "field": FieldValue,
    "grant": GrantValue,
    "request": RequestValue,
}


def parse_disclosure(disclosure: object) -> Disclosed:
    """Decode and validate one disclosure; raises ``bad-disclosure``."""
    if not isinstance(disclosure, str):
        raise EnvelopeError("bad-disclosure", "a disclosure must be a base64url string")
    try:
        raw = b64url_decode(disclosure)
        array = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
        )
    except (EncodingError, UnicodeDecodeError, ValueError, RecursionError):
        raise EnvelopeError(
            "bad-disclosure", "a disclosure is not base64url of a JSON array"
        ) from None
    if not (isinstance(array, list) and len(array) == 3):
        raise EnvelopeError("bad-disclosure", "a disclosure must be [salt, type, value]")
    salt, kind, value = array
    try:
        if not isinstance(salt, str):
            raise EncodingError("salt")
        b64url_decode(salt, length=SALT_SIZE)
    except EncodingError:
        raise EnvelopeError(
            "bad-disclosure", "a disclosure's salt must be base64url of 16 bytes"
        ) from None
    model = _VALUE_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise EnvelopeError(
            "bad-disclosure", "a disclosure's type must be field, grant or request"
        )
    try:
        parsed = model.model_validate(value, strict=True)
    except pydantic.ValidationError as exc:
        raise EnvelopeError("bad-disclosure", f"{kind} disclosure: {_first_error(exc)}") from None
    return Disclosed(disclosure, disclosure_digest(disclosure), kind, parsed)


# --------------------------------------------------------------------------
# the manifest


def manifest_signing_input(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes signed: ``refgate/v2/manifest\\n`` + RFC 8785 bytes of the manifest."""
    return MANIFEST_PREFIX + _canonical(manifest)


def _sign_manifest(manifest: Mapping[str, Any], sig_seed: bytes) -> str:
    return b64url_encode(keys.sign(sig_seed, manifest_signing_input(manifest)))


def _verify_manifest(manifest: Manifest, signature: str, sig_public: bytes) -> bytes:
    """Check ``sender_kid`` and the signature; returns the manifest's RFC 8785 bytes."""
    if manifest.sender_kid != keys.kid(sig_public):
        raise EnvelopeError(
            "kid-mismatch", "manifest.sender_kid is not the kid of the sender's signing key"
        )
    try:
        raw = b64url_decode(signature, length=keys.SIGNATURE_SIZE)
    except EncodingError:
        raise EnvelopeError("malformed", "signature must be base64url of 64 bytes") from None
    canonical = _canonical(manifest.model_dump())
    if not keys.verify(sig_public, MANIFEST_PREFIX + canonical, raw):
        raise EnvelopeError("bad-signature", "the manifest signature does not verify")
    return canonical


def _check_padding(digests: Sequence[str]) -> None:
    if list(digests) != sorted(set(digests)):
        raise EnvelopeError("bad-padding", "manifest.digests must be sorted and unique")
    if len(digests) % PAD_TO:
        raise EnvelopeError("bad-padding", f"manifest.digests must be a multiple of {PAD_TO}")


def _padded(digests: Iterable[str], random: RandomSource) -> list[str]:
    """``digests`` plus decoys, sorted, to a multiple of 8 (at least 8)."""
    out = set(digests)
    while len(out) < PAD_TO or len(out) % PAD_TO:
        out.add(b64url_encode(random(HASH_SIZE)))
    return sorted(out)


# --------------------------------------------------------------------------
# checking a set of disclosures (server and client)


@dataclass
class _Set:
    """Disclosures of one referral by what they disclose."""

    fields: dict[str, Disclosed] = field(default_factory=dict)  # fid ->
    grants: dict[tuple[str, str], Disclosed] = field(default_factory=dict)  # (fid, recipient) ->
    requests: dict[str, Disclosed] = field(default_factory=dict)  # recipient ->

    def add(self, d: Disclosed) -> None:
        if isinstance(d.value, FieldValue):
            self._put(self.fields, d.value.fid, d, f"field {d.value.fid}")
        elif isinstance(d.value, GrantValue):
            key = (d.value.fid, d.value.recipient)
            self._put(self.grants, key, d, f"grant of field {key[0]} to {key[1]}")
        else:
            self._put(self.requests, d.value.recipient, d, f"request to {d.value.recipient}")

    @staticmethod
    def _put(where: dict[Any, Disclosed], key: Any, d: Disclosed, what: str) -> None:
        if key in where:
            raise EnvelopeError("duplicate-disclosure", f"two disclosures for the {what}")
        where[key] = d


def _disclosed(
    disclosures: Sequence[str],
    digests: frozenset[str],
    *,
    seen: Iterable[str] = (),
    parsed: Sequence[Disclosed] | None = None,
) -> list[Disclosed]:
    """Parse disclosures, each digest in ``digests`` and none twice (nor in ``seen``).

    ``parsed``: the caller's own :func:`parse_disclosure` of each item, in order, used
    only where its string is the item (so a disclosure is never parsed twice, and
    never taken from anything but itself)."""
    if parsed is not None and len(parsed) != len(disclosures):
        parsed = None
    taken = set(seen)
    out = []
    for i, item in enumerate(disclosures):
        d = parsed[i] if parsed is not None and parsed[i].disclosure == item else None
        if d is None:
            d = parse_disclosure(item)
        if d.digest not in digests:
            raise EnvelopeError(
                "undisclosed-digest", "a disclosure's digest is not in manifest.digests"
            )
        if d.digest in taken:
            raise EnvelopeError("duplicate-disclosure", "two disclosures share a digest")
        taken.add(d.digest)
        out.append(d)
    return out


def _grant_value(d: Disclosed) -> GrantValue:
    if not isinstance(d.value, GrantValue):
        raise TypeError("not a grant disclosure")
    return d.value


def _check_grant(g: GrantValue, sender: str, created_at: str) -> None:
    where = f"grant of field {g.fid} to {g.recipient}"
    if g.recipient == sender:
        if g.purpose != SENDER_PURPOSE or g.expires_at is not None or g.release_ref is not None:
            raise EnvelopeError(
                "invalid-consent",
                f"{where}: the sender's copy has purpose 'sender', expires_at and "
                "release_ref null",
            )
        return
    if g.purpose == SENDER_PURPOSE:
        raise EnvelopeError("invalid-consent", f"{where}: purpose 'sender' is the sender's own")
    if g.expires_at is None:
        raise EnvelopeError(
            "invalid-consent", f"{where}: expires_at is required (consent is time-limited)"
        )
    if _time_key(g.expires_at) <= _time_key(created_at):
        raise EnvelopeError("invalid-consent", f"{where}: expires_at is not after created_at")


def _time_key(text: str) -> tuple[str, str]:
    """Sortable form of an RFC 3339 ``Z`` time (fraction compared as padded digits)."""
    main, _, frac = text[:-1].partition(".")
    return main, frac.ljust(9, "0")


def _match_wrapped(
    wrapped_keys: Sequence[Any], grants: Mapping[tuple[str, str], Disclosed]
) -> None:
    """Wrapped keys and grant disclosures match one to one, kid and hash equal."""
    seen: set[tuple[str, str]] = set()
    for w in wrapped_keys:
        pair = (w.fid, w.recipient)
        where = f"wrapped key of field {w.fid} for {w.recipient}"
        if pair in seen:
            raise EnvelopeError("consent-mismatch", f"{where} appears twice")
        seen.add(pair)
        d = grants.get(pair)
        if d is None:
            raise EnvelopeError("consent-mismatch", f"{where} has no grant disclosure")
        g = _grant_value(d)
        if g.kid != w.kid:
            raise EnvelopeError("consent-mismatch", f"{where}: kid differs from its grant")
        if not _equal(_sha256(b64url_decode(w.wrapped_key)), b64url_decode(g.wrapped_key_sha256)):
            raise EnvelopeError("hash-mismatch", f"{where}: sha256 differs from its grant")
    for pair in grants:
        if pair not in seen:
            raise EnvelopeError(
                "consent-mismatch", f"grant of field {pair[0]} to {pair[1]} has no wrapped key"
            )


def _check_recipients(s: _Set, sender: str, *, granted: Iterable[str] = ()) -> set[str]:
    """Every recipient has a request and at least one grant; returns the recipients."""
    with_grants = {r for _, r in s.grants} | set(granted)
    with_grants.discard(sender)
    if sender in s.requests:
        raise EnvelopeError("malformed", "the sender does not address a request to itself")
    for recipient in s.requests:
        if recipient not in with_grants:
            raise EnvelopeError(
                "missing-grant",
                f"recipient {recipient} has a request but no grant: it would receive nothing",
            )
    return with_grants


# --------------------------------------------------------------------------
# server side: creation


@dataclass(frozen=True)
class Limits:
    max_fields: int = 64
    max_field_bytes: int = 65536
    max_recipients: int = 64


@dataclass(frozen=True)
class CheckedReferral:
    """A creation body that passed :func:`check_envelope`, by what it discloses."""

    manifest: Manifest
    manifest_bytes: bytes
    fields: Mapping[str, Disclosed]  # fid ->
    grants: Mapping[tuple[str, str], Disclosed]  # (fid, recipient) ->
    requests: Mapping[str, Disclosed]  # recipient ->
    recipients: frozenset[str]


def check_envelope(
    body: EnvelopeIn,
    *,
    sender_sig_public: bytes,
    limits: Limits = Limits(),
    parsed: Sequence[Disclosed] | None = None,
) -> CheckedReferral:
    """Return only if a ``POST /v1/referrals`` body is well formed and signed.

    What a server can check without a private key, a clock or a directory:
    the signature by ``sender_sig_public`` (whose kid is ``sender_kid``); the
    digest list sorted, unique, a multiple of 8; every disclosure well formed,
    its digest in the list, no digest or (fid, recipient) twice; ciphertexts
    and field disclosures one to one with equal hashes; wrapped keys and grant
    disclosures one to one with equal kids and hashes; a sender copy of every
    field; every recipient with exactly one request and at least one grant,
    every request to an agency with a grant; purposes, expiries after
    ``created_at``; the size limits. The caller checks kids against its
    directory, recipients' status and times against its clock. ``parsed``: the
    caller's :func:`parse_disclosure` of ``body.disclosures``, in order, if it
    already made it (not parsed again).
    """
    m = body.manifest
    sender = m.sender_agency
    canonical = _verify_manifest(m, body.signature, sender_sig_public)
    _check_padding(m.digests)
    s = _Set()
    for d in _disclosed(body.disclosures, frozenset(m.digests), parsed=parsed):
        s.add(d)
    if len(s.fields) > limits.max_fields:
        raise EnvelopeError("too-many-fields", f"at most {limits.max_fields} fields")
    if set(body.ciphertexts) != set(s.fields):
        raise EnvelopeError(
            "field-mismatch", "ciphertexts and field disclosures must match one to one by fid"
        )
    for fid, d in s.fields.items():
        _check_ciphertext(fid, body.ciphertexts[fid], d, limits.max_field_bytes)
    for (fid, _recipient), d in s.grants.items():
        if fid not in s.fields:
            raise EnvelopeError("field-mismatch", f"a grant names field {fid}, which has none")
        _check_grant(_grant_value(d), sender, m.created_at)
    for fid in s.fields:
        if (fid, sender) not in s.grants:
            raise EnvelopeError("missing-sender-copy", f"field {fid} has no copy for the sender")
    recipients = _check_recipients(s, sender)
    for recipient in recipients:
        if recipient not in s.requests:
            raise EnvelopeError(
                "missing-request", f"recipient {recipient} has grants but no request"
            )
    if not recipients:
        raise EnvelopeError("missing-request", "a referral needs at least one recipient")
    if len(recipients) > limits.max_recipients:
        raise EnvelopeError("too-many-recipients", f"at most {limits.max_recipients} recipients")
    _match_wrapped(body.wrapped_keys, s.grants)
    return CheckedReferral(
        m, canonical, s.fields, s.grants, s.requests, frozenset(recipients)
    )


def _check_ciphertext(fid: str, text: str, d: Disclosed, max_bytes: int | None) -> bytes:
    if not isinstance(d.value, FieldValue):
        raise TypeError("not a field disclosure")
    try:
        blob = b64url_decode(text)
    except EncodingError:
        raise EnvelopeError("malformed", f"ciphertext of field {fid} is not base64url") from None
    if len(blob) < NONCE_SIZE + TAG_SIZE:
        raise EnvelopeError("malformed", f"ciphertext of field {fid} is shorter than nonce and tag")
    if max_bytes is not None and len(blob) - NONCE_SIZE - TAG_SIZE > max_bytes:
        raise EnvelopeError(
            "field-too-large", f"field {fid} exceeds {max_bytes} bytes of plaintext"
        )
    if not _equal(_sha256(blob), b64url_decode(d.value.ciphertext_sha256)):
        raise EnvelopeError("hash-mismatch", f"ciphertext of field {fid} differs from its hash")
    return blob


# --------------------------------------------------------------------------
# server side: amendments


@dataclass(frozen=True)
class CheckedAmendment:
    """An amendment that passed :func:`check_amendment`."""

    manifest: Manifest
    manifest_bytes: bytes
    grants: Mapping[tuple[str, str], Disclosed]  # the new grants, (fid, recipient) ->
    requests: Mapping[str, Disclosed]  # the new requests, recipient ->
    new_recipients: frozenset[str]


def check_amendment(
    current: Manifest,
    body: Amendment,
    *,
    sender_sig_public: bytes,
    fids: Iterable[str],
    recipients: Iterable[str],
    max_recipients: int = 64,
) -> CheckedAmendment:
    """Check a ``POST /v1/referrals/{id}/grants`` body against the stored manifest.

    ``fids`` are the referral's field ids and ``recipients`` its current
    recipients. On return: the new manifest has the same ``referral_id``,
    ``sender_agency`` and ``created_at``, ``version`` one more than
    ``current``'s, and a digest list (sorted, padded) that contains every
    current digest; it is signed by ``sender_sig_public``; every disclosure is
    a new grant or request whose digest is new in the list; grants name known
    fids and are matched one to one by wrapped keys; a new recipient brings
    exactly one request and a grant, an existing one no second request.
    Whether ``version`` is still current when stored is the caller's check
    (a conditional update), as are kids and clocks.
    """
    m = body.manifest
    sender = m.sender_agency
    for member in ("referral_id", "sender_agency", "created_at"):
        if getattr(m, member) != getattr(current, member):
            raise EnvelopeError("manifest-changed", f"manifest.{member} cannot change")
    if m.version != current.version + 1:
        raise EnvelopeError(
            "manifest-changed",
            f"manifest.version must be {current.version + 1} (the current version plus one)",
        )
    canonical = _verify_manifest(m, body.signature, sender_sig_public)
    _check_padding(m.digests)
    if not set(current.digests) <= set(m.digests):
        raise EnvelopeError("manifest-changed", "manifest.digests must keep every current digest")
    s = _Set()
    for d in _disclosed(body.disclosures, frozenset(m.digests), seen=current.digests):
        s.add(d)
    if s.fields:
        raise EnvelopeError("malformed", "an amendment adds grants and requests, not fields")
    known = set(fids)
    for (fid, recipient), d in s.grants.items():
        if fid not in known:
            raise EnvelopeError("field-mismatch", f"a grant names field {fid}, which has none")
        if recipient == sender:
            raise EnvelopeError("malformed", "the sender's own copies cannot be amended")
        _check_grant(_grant_value(d), sender, m.created_at)
    existing = set(recipients)
    for recipient in s.requests:
        if recipient in existing:
            raise EnvelopeError(
                "duplicate-disclosure", f"recipient {recipient} already has a request"
            )
    granted = _check_recipients(s, sender, granted=existing)
    new = {r for _, r in s.grants} - existing
    for recipient in new:
        if recipient not in s.requests:
            raise EnvelopeError(
                "missing-request", f"new recipient {recipient} has grants but no request"
            )
    if len(granted) > max_recipients:
        raise EnvelopeError("too-many-recipients", f"at most {max_recipients} recipients")
    _match_wrapped(body.wrapped_keys, s.grants)
    return CheckedAmendment(m, canonical, s.grants, s.requests, frozenset(new))


# --------------------------------------------------------------------------
# sender side


@dataclass(frozen=True)
class Grant:
    """A survivor's consent: release field ``field`` (a name) to ``recipient``.

    ``enc_public`` is the recipient's current X25519 key as the client
    verified it; ``expires_at`` is RFC 3339 UTC with ``Z``.
    """

    field: str
    recipient: str
    enc_public: bytes
    purpose: str
    expires_at: str
    release_ref: str | None = None


@dataclass(frozen=True)
class Request:
    """What ``recipient`` is asked to do (one per recipient)."""

    recipient: str
    services: tuple[str, ...]
    urgency: str
    case_ref: str | None = None


@dataclass(frozen=True)
class Sealed:
    """A sealed referral: the request body and, for the sender, which fid is which name."""

    body: dict[str, Any]
    fids: dict[str, str]  # field name -> fid


def _grant_disclosure(
    random: RandomSource, fid: str, recipient: str, kid: str, wrapped: bytes,
    purpose: str, expires_at: str | None, release_ref: str | None,
) -> str:
    return make_disclosure(random(SALT_SIZE), "grant", {
        "fid": fid,
        "recipient": recipient,
        "kid": kid,
        "wrapped_key_sha256": b64url_encode(_sha256(wrapped)),
        "purpose": purpose,
        "expires_at": expires_at,
        "release_ref": release_ref,
    })


def _request_disclosure(random: RandomSource, r: Request) -> str:
    return make_disclosure(random(SALT_SIZE), "request", {
        "recipient": r.recipient,
        "services": list(r.services),
        "urgency": r.urgency,
        "case_ref": r.case_ref,
    })


def _wrap(
    random: RandomSource, fid: str, recipient: str, public: bytes, field_key: bytes,
    purpose: str, expires_at: str | None, release_ref: str | None,
) -> tuple[str, dict[str, str]]:
    try:
        kid = keys.kid(public)
        wrapped = keys.seal(public, field_key)
    except keys.InvalidKeyError as exc:
        raise EnvelopeError("malformed", f"the key of {recipient}: {exc}") from exc
    entry = {"fid": fid, "recipient": recipient, "kid": kid, "wrapped_key": b64url_encode(wrapped)}
    disclosure = _grant_disclosure(
        random, fid, recipient, kid, wrapped, purpose, expires_at, release_ref
    )
    return disclosure, entry


def _field_plaintext(name: str, value: str) -> bytes:
    if not isinstance(name, str) or not _valid_name(name):
        raise EnvelopeError("invalid-field", f"field name {name!r:.40} must match {FIELD_NAME_RE}")
    if not isinstance(value, str):
        raise EnvelopeError("invalid-field", f"value of {name!r} must be a string")
    return _canonical({"name": name, "value": value})


_NAME = re.compile(FIELD_NAME_RE[1:-1])


def _valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def seal_envelope(
    *,
    referral_id: str,
    sender_agency: str,
    sender_sig_seed: bytes,
    sender_enc_public: bytes,
    fields: Mapping[str, str],
    grants: Sequence[Grant],
    requests: Sequence[Request],
    created_at: str,
    unsafe_random: RandomSource | None = None,
) -> Sealed:
    """Encrypt ``fields`` and return the ``POST /v1/referrals`` body.

    Each field gets a fresh fid, 32-byte key and 24-byte nonce; its key is
    wrapped for the sender and for every grant naming it, and for nobody
    else. Every recipient needs one request and at least one grant. The body
    is checked with :func:`check_envelope` before it is returned, so what
    this returns the server's checks accept (its clock and directory aside).

    ``unsafe_random`` replaces the OS CSPRNG for fids, salts, field keys,
    nonces and decoys: for test vectors only (sealed boxes stay random).
    """
    random = unsafe_random or os.urandom
    if not fields:
        raise EnvelopeError("malformed", "a referral needs at least one field")
    names = set(fields)
    for g in grants:
        if g.field not in names:
            raise EnvelopeError("field-mismatch", f"consent names unknown field {g.field!r}")
    fids: dict[str, str] = {}
    disclosures: list[str] = []
    ciphertexts: dict[str, str] = {}
    wrapped_keys: list[dict[str, str]] = []
    for name, value in fields.items():
        plaintext = _field_plaintext(name, value)
        fid = b64url_encode(random(FID_SIZE))
        fids[name] = fid
        field_key = random(FIELD_KEY_SIZE)
        nonce = random(NONCE_SIZE)
        box = nacl.secret.Aead(field_key)
        blob = bytes(box.encrypt(plaintext, _aad(referral_id, fid), nonce))
        ciphertexts[fid] = b64url_encode(blob)
        disclosures.append(make_disclosure(random(SALT_SIZE), "field", {
            "fid": fid,
            "ciphertext_sha256": b64url_encode(_sha256(blob)),
            "commitment": b64url_encode(commitment(field_key, referral_id, fid)),
        }))
        copies: list[tuple[str, bytes, str, str | None, str | None]] = [
            (sender_agency, sender_enc_public, SENDER_PURPOSE, None, None)
        ]
        copies += [
            (g.recipient, g.enc_public, g.purpose, g.expires_at, g.release_ref)
            for g in grants if g.field == name
        ]
        for recipient, public, purpose, expires, ref in copies:
            d, entry = _wrap(random, fid, recipient, public, field_key, purpose, expires, ref)
            disclosures.append(d)
            wrapped_keys.append(entry)
    disclosures += [_request_disclosure(random, r) for r in requests]
    sig_public = keys.sig_public_from_seed(sender_sig_seed)
    manifest = {
        "v": VERSION,
        "referral_id": referral_id,
        "sender_agency": sender_agency,
        "sender_kid": keys.kid(sig_public),
        "created_at": created_at,
        "version": 1,
        "digests": _padded((disclosure_digest(d) for d in disclosures), random),
    }
    body = {
        "manifest": manifest,
        "signature": _sign_manifest(manifest, sender_sig_seed),
        "disclosures": disclosures,
        "ciphertexts": ciphertexts,
        "wrapped_keys": wrapped_keys,
    }
    check_envelope(_model(EnvelopeIn, body), sender_sig_public=sig_public,
                   limits=Limits(2**31, 2**31, 2**31))
    return Sealed(body, fids)


def _model(model: type[Any], value: object) -> Any:
    try:
        return model.model_validate(value, strict=True)
    except pydantic.ValidationError as exc:
        raise EnvelopeError("malformed", _first_error(exc)) from None


def amend(
    document: Mapping[str, Any],
    *,
    sender_agency: str,
    sender_sig_seed: bytes,
    sender_enc_private: bytes,
    grants: Sequence[Grant],
    requests: Sequence[Request],
    unsafe_random: RandomSource | None = None,
) -> dict[str, Any]:
    """Widen consent: the ``POST /v1/referrals/{id}/grants`` body.

    ``document`` is the referral as its sender reads it. It is opened first
    (signature, digests, hashes, commitments), so a server that altered it
    cannot get a key wrapped for anyone. ``grants`` name fields by name;
    ``requests`` are needed for recipients new to the referral. The new
    manifest keeps every digest, adds the new ones (re-padded with decoys)
    and has ``version`` + 1.
    """
    random = unsafe_random or os.urandom
    sig_public = keys.sig_public_from_seed(sender_sig_seed)
    opened = open_envelope(
        document, agency_id=sender_agency, enc_private=sender_enc_private,
        sender_sig_public=sig_public,
    )
    if opened.manifest.sender_agency != sender_agency:
        raise EnvelopeError("malformed", "this referral was sent by another agency")
    if not grants:
        raise EnvelopeError("malformed", "no consent to add")
    disclosures: list[str] = []
    wrapped_keys: list[dict[str, str]] = []
    for g in grants:
        if g.field not in opened.fids:
            raise EnvelopeError("field-mismatch", f"the referral has no field {g.field!r}")
        fid = opened.fids[g.field]
        d, entry = _wrap(random, fid, g.recipient, g.enc_public, opened.field_keys[fid],
                         g.purpose, g.expires_at, g.release_ref)
        disclosures.append(d)
        wrapped_keys.append(entry)
    disclosures += [_request_disclosure(random, r) for r in requests]
    old = opened.manifest
    manifest = {
        **old.model_dump(),
        "version": old.version + 1,
        "digests": _padded([*old.digests, *(disclosure_digest(d) for d in disclosures)], random),
    }
    body = {
        "manifest": manifest,
        "signature": _sign_manifest(manifest, sender_sig_seed),
        "disclosures": disclosures,
        "wrapped_keys": wrapped_keys,
    }
    check_amendment(
        old, _model(Amendment, body), sender_sig_public=sig_public,
        fids=opened.fids.values(), recipients=opened.requests,
        max_recipients=2**31,
    )
    return body


# --------------------------------------------------------------------------
# opening (a recipient, or the sender)


@dataclass(frozen=True)
class Opened:
    """What a caller could open of a referral, every part verified.

    ``fields`` maps field name to value; ``fids`` name to fid; ``grants``
    are the grant disclosures served (for a recipient: its own active ones);
    ``requests`` by recipient (a recipient: its own); ``field_keys`` by fid
    (kept only as long as the caller needs them, e.g. to amend).
    """

    manifest: Manifest
    fields: dict[str, str]
    fids: dict[str, str]
    grants: list[GrantValue]
    requests: dict[str, RequestValue]
    field_keys: dict[str, bytes] = field(repr=False)


def open_envelope(
    document: Mapping[str, Any],
    *,
    agency_id: str,
    enc_private: bytes,
    sender_sig_public: bytes,
) -> Opened:
    """Verify and decrypt a ``GET /v1/referrals/{id}`` answer for ``agency_id``.

    In order: ``sender_kid`` is the kid of ``sender_sig_public`` and the
    manifest signature verifies; every disclosure served is well formed, its
    digest in the manifest, none twice; each wrapped key addressed to
    ``agency_id`` has its grant disclosure (same kid and hash), its kid is
    ours, the sealed box opens, and the key matches the field's commitment;
    the ciphertext matches its disclosed hash and decrypts under AAD
    ``refgate/v2|<referral_id>|<fid>``; the plaintext is ``{"name", "value"}``
    with a valid name, no name twice. Returns everything or raises
    :class:`EnvelopeError`; never part of the fields.
    """
    if not isinstance(document, Mapping):
        raise EnvelopeError("malformed", "the referral must be a JSON object")
    for member in ("manifest", "signature", "disclosures", "wrapped_keys"):
        if member not in document:
            raise EnvelopeError("malformed", f"the referral has no {member!r}")
    manifest = _model(Manifest, document["manifest"])
    signature = document["signature"]
    if not isinstance(signature, str):
        raise EnvelopeError("malformed", "signature must be a string")
    _verify_manifest(manifest, signature, sender_sig_public)
    disclosures = document["disclosures"]
    if not isinstance(disclosures, list):
        raise EnvelopeError("malformed", "disclosures must be a list")
    s = _Set()
    for d in _disclosed(disclosures, frozenset(manifest.digests)):
        s.add(d)
    ciphertexts = document.get("ciphertexts") or {}
    if not isinstance(ciphertexts, Mapping):
        raise EnvelopeError("malformed", "ciphertexts must be an object")
    wrapped = document["wrapped_keys"]
    if not isinstance(wrapped, list):
        raise EnvelopeError("malformed", "wrapped_keys must be a list")
    own_kid = keys.kid(keys.enc_public_from_private(enc_private))
    fields: dict[str, str] = {}
    fids: dict[str, str] = {}
    field_keys: dict[str, bytes] = {}
    for item in wrapped:
        w = _model(WrappedKeyIn, item)
        if w.recipient != agency_id:
            continue
        fid = w.fid
        field_key = _unwrap(w, s, manifest, enc_private, own_kid)
        name, value = _decrypt_field(fid, ciphertexts.get(fid), s, manifest, field_key)
        if name in fields:
            raise EnvelopeError("invalid-field", f"two fields are named {name!r}")
        fields[name], fids[name], field_keys[fid] = value, fid, field_key
    return Opened(
        manifest,
        fields,
        fids,
        [_grant_value(d) for d in s.grants.values()],
        {r: d.value for r, d in s.requests.items() if isinstance(d.value, RequestValue)},
        field_keys,
    )


def _unwrap(w: Any, s: _Set, manifest: Manifest, enc_private: bytes, own_kid: str) -> bytes:
    where = f"wrapped key of field {w.fid}"
    d = s.grants.get((w.fid, w.recipient))
    if d is None:
        raise EnvelopeError("consent-mismatch", f"{where} has no grant disclosure")
    g = _grant_value(d)
    data = b64url_decode(w.wrapped_key)
    if g.kid != w.kid:
        raise EnvelopeError("consent-mismatch", f"{where}: kid differs from its grant")
    if not _equal(_sha256(data), b64url_decode(g.wrapped_key_sha256)):
        raise EnvelopeError("hash-mismatch", f"{where}: sha256 differs from its grant")
    if w.kid != own_kid:
        raise EnvelopeError("kid-mismatch", f"{where} is for another encryption key")
    try:
        field_key = keys.unseal(enc_private, data)
    except keys.DecryptionError as exc:
        raise EnvelopeError("decrypt-failed", f"{where} does not open") from exc
    fd = s.fields.get(w.fid)
    if fd is None or not isinstance(fd.value, FieldValue):
        raise EnvelopeError("field-mismatch", f"field {w.fid} has no field disclosure")
    expected = b64url_decode(fd.value.commitment)
    if len(field_key) != FIELD_KEY_SIZE or not _equal(
        commitment(field_key, manifest.referral_id, w.fid), expected
    ):
        raise EnvelopeError("bad-commitment", f"{where} does not carry the committed field key")
    return field_key


def _decrypt_field(
    fid: str, text: object, s: _Set, manifest: Manifest, field_key: bytes
) -> tuple[str, str]:
    if not isinstance(text, str):
        raise EnvelopeError("field-mismatch", f"the ciphertext of field {fid} is missing")
    blob = _check_ciphertext(fid, text, s.fields[fid], None)
    try:
        plaintext = nacl.secret.Aead(field_key).decrypt(blob, _aad(manifest.referral_id, fid))
    except nacl.exceptions.CryptoError:
        raise EnvelopeError("decrypt-failed", f"field {fid} does not decrypt") from None
    try:
        value = json.loads(
            plaintext.decode("utf-8"), object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EnvelopeError("invalid-field", f"field {fid} is not JSON") from None
    if not (
        isinstance(value, dict) and set(value) == {"name", "value"}
        and isinstance(value["name"], str) and _valid_name(value["name"])
        and isinstance(value["value"], str)
    ):
        raise EnvelopeError(
            "invalid-field", f"field {fid} is not {{\"name\", \"value\"}} with a valid name"
        )
    return value["name"], value["value"]


# --------------------------------------------------------------------------
# statuses and notes


def status_signing_input(
    *, referral_id: str, recipient: str, status: str, reason: str | None,
    note_sha256: str | None, signed_at: str,
) -> bytes:
    """``refgate/v2/status\\n`` + RFC 8785 bytes of the signed status object."""
    return STATUS_PREFIX + _canonical({
        "referral_id": referral_id,
        "recipient": recipient,
        "status": status,
        "reason": reason,
        "note_sha256": note_sha256,
        "signed_at": signed_at,
    })


def note_sha256(note: str | None) -> str | None:
    """base64url SHA-256 of a sealed note's bytes, or None."""
    if note is None:
        return None
    try:
        return b64url_encode(_sha256(b64url_decode(note)))
    except EncodingError:
        raise EnvelopeError("malformed", "note must be base64url of a sealed box") from None


def sign_status(
    *, referral_id: str, recipient: str, status: str, reason: str | None, note: str | None,
    signed_at: str, sig_seed: bytes,
) -> dict[str, Any]:
    """The ``POST /v1/referrals/{id}/status`` body, signed by the recipient."""
    message = status_signing_input(
        referral_id=referral_id, recipient=recipient, status=status, reason=reason,
        note_sha256=note_sha256(note), signed_at=signed_at,
    )
    return {
        "status": status,
        "reason": reason,
        "note": note,
        "signed_at": signed_at,
        "signature": b64url_encode(keys.sign(sig_seed, message)),
    }


def verify_status(
    item: Mapping[str, Any], *, referral_id: str, sig_public: bytes
) -> None:
    """Return only if a status (posted, or a ``statuses`` item) is signed by ``sig_public``.

    ``item`` needs ``recipient`` (or the caller adds it), ``status``,
    ``reason``, ``note``, ``signed_at`` and ``signature``. Raises
    ``bad-signature`` for a rewritten status, reason, note or time.
    """
    signature = item.get("signature")
    signed_at = item.get("signed_at")
    if not isinstance(signature, str) or not isinstance(signed_at, str):
        raise EnvelopeError("bad-signature", "the status is not signed")
    try:
        note_hash = note_sha256(item.get("note"))
        StatusSigned.model_validate({
            "referral_id": referral_id, "recipient": item.get("recipient"),
            "status": item.get("status"), "reason": item.get("reason"),
            "note_sha256": note_hash, "signed_at": signed_at,
        }, strict=True)
        raw = b64url_decode(signature, length=keys.SIGNATURE_SIZE)
    except (pydantic.ValidationError, EncodingError, EnvelopeError):
        raise EnvelopeError("bad-signature", "the status signature does not verify") from None
    message = status_signing_input(
        referral_id=referral_id, recipient=str(item["recipient"]), status=str(item["status"]),
        reason=item.get("reason"), note_sha256=note_hash, signed_at=signed_at,
    )
    if not keys.verify(sig_public, message, raw):
        raise EnvelopeError("bad-signature", "the status signature does not verify")


def seal_note(text: str, sender_enc_public: bytes) -> str:
    """Seal a status note to the sender's X25519 key; returns base64url."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EnvelopeError("malformed", "note is not valid Unicode") from exc
    return b64url_encode(keys.seal(sender_enc_public, data))


def open_note(note: str, enc_private: bytes) -> str:
    """Open a note sealed by :func:`seal_note`; raises ``decrypt-failed`` otherwise."""
    try:
        data = b64url_decode(note)
        return keys.unseal(enc_private, data).decode("utf-8")
    except EncodingError as exc:
        raise EnvelopeError("malformed", "note is not base64url") from exc
    except keys.DecryptionError as exc:
        raise EnvelopeError("decrypt-failed", "note does not open with this key") from exc
    except UnicodeDecodeError as exc:
        raise EnvelopeError("decrypt-failed", "note is not UTF-8") from exc
