"""The sender's side: :func:`seal_envelope` encrypts the fields and builds a
creation body, :func:`amend` widens the consent of a referral it has opened.
Both return only what the server's checks accept."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nacl.secret

from app.crypto import keys
from app.crypto.encoding import b64url_encode
from app.crypto.envelope.checks import Limits, check_amendment, check_envelope
from app.crypto.envelope.common import (
    FID_SIZE,
    FIELD_KEY_SIZE,
    NONCE_SIZE,
    SALT_SIZE,
    SENDER_PURPOSE,
    VERSION,
    EnvelopeError,
    RandomSource,
    _aad,
    _canonical,
    _model,
    _sha256,
    _valid_name,
    commitment,
)
from app.crypto.envelope.disclosures import disclosure_digest, make_disclosure
from app.crypto.envelope.manifest import _padded, _sign_manifest
from app.crypto.envelope.opening import Opened, open_envelope
from app.crypto.wire import FIELD_NAME_RE, Amendment, EnvelopeIn


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
    random: RandomSource,
    fid: str,
    recipient: str,
    kid: str,
    wrapped: bytes,
    purpose: str,
    expires_at: str | None,
    release_ref: str | None,
) -> str:
    return make_disclosure(
        random(SALT_SIZE),
        "grant",
        {
            "fid": fid,
            "recipient": recipient,
            "kid": kid,
            "wrapped_key_sha256": b64url_encode(_sha256(wrapped)),
            "purpose": purpose,
            "expires_at": expires_at,
            "release_ref": release_ref,
        },
    )


def _request_disclosure(random: RandomSource, r: Request) -> str:
    return make_disclosure(
        random(SALT_SIZE),
        "request",
        {
            "recipient": r.recipient,
            "services": list(r.services),
            "urgency": r.urgency,
            "case_ref": r.case_ref,
        },
    )


def _wrap(
    random: RandomSource,
    fid: str,
    recipient: str,
    public: bytes,
    field_key: bytes,
    purpose: str,
    expires_at: str | None,
    release_ref: str | None,
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
    _check_field_names(fields, grants)
    sender_copy: _Copy = (sender_agency, sender_enc_public, SENDER_PURPOSE, None, None)
    sealed = _seal_fields(random, referral_id, fields, grants, sender_copy)
    disclosures = [*sealed.disclosures, *(_request_disclosure(random, r) for r in requests)]
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
        "ciphertexts": sealed.ciphertexts,
        "wrapped_keys": sealed.wrapped_keys,
    }
    check_envelope(
        _model(EnvelopeIn, body), sender_sig_public=sig_public, limits=Limits(2**31, 2**31, 2**31)
    )
    return Sealed(body, sealed.fids)


def _check_field_names(fields: Mapping[str, str], grants: Sequence[Grant]) -> None:
    """At least one field, and every grant names one of them."""
    if not fields:
        raise EnvelopeError("malformed", "a referral needs at least one field")
    names = set(fields)
    for g in grants:
        if g.field not in names:
            raise EnvelopeError("field-mismatch", f"consent names unknown field {g.field!r}")


_Copy = tuple[str, bytes, str, str | None, str | None]
"""A field key's copy: recipient, its X25519 key, purpose, ``expires_at``, ``release_ref``."""


@dataclass(frozen=True)
class _SealedFields:
    """The fields as a creation body carries them."""

    fids: dict[str, str]  # field name -> fid
    ciphertexts: dict[str, str]  # fid -> base64url
    disclosures: list[str]  # each field's disclosure, then its grants', field by field
    wrapped_keys: list[dict[str, str]]


def _seal_fields(
    random: RandomSource,
    referral_id: str,
    fields: Mapping[str, str],
    grants: Sequence[Grant],
    sender_copy: _Copy,
) -> _SealedFields:
    """Encrypt each field and wrap its key for the sender and for each grant naming it."""
    out = _SealedFields({}, {}, [], [])
    for name, value in fields.items():
        fid, blob, field_key = _encrypt_field(random, referral_id, name, value)
        out.fids[name] = fid
        out.ciphertexts[fid] = b64url_encode(blob)
        out.disclosures.append(
            make_disclosure(
                random(SALT_SIZE),
                "field",
                {
                    "fid": fid,
                    "ciphertext_sha256": b64url_encode(_sha256(blob)),
                    "commitment": b64url_encode(commitment(field_key, referral_id, fid)),
                },
            )
        )
        copies = [sender_copy] + [
            (g.recipient, g.enc_public, g.purpose, g.expires_at, g.release_ref)
            for g in grants
            if g.field == name
        ]
        for recipient, public, purpose, expires, ref in copies:
            d, entry = _wrap(random, fid, recipient, public, field_key, purpose, expires, ref)
            out.disclosures.append(d)
            out.wrapped_keys.append(entry)
    return out


def _encrypt_field(
    random: RandomSource, referral_id: str, name: str, value: str
) -> tuple[str, bytes, bytes]:
    """(fid, ciphertext, field key): a fresh fid, 32-byte key and 24-byte nonce, under AAD
    ``refgate/v2|<referral_id>|<fid>``."""
    plaintext = _field_plaintext(name, value)
    fid = b64url_encode(random(FID_SIZE))
    field_key = random(FIELD_KEY_SIZE)
    nonce = random(NONCE_SIZE)
    box = nacl.secret.Aead(field_key)
    blob = bytes(box.encrypt(plaintext, _aad(referral_id, fid), nonce))
    return fid, blob, field_key


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
        document,
        agency_id=sender_agency,
        enc_private=sender_enc_private,
        sender_sig_public=sig_public,
    )
    if opened.manifest.sender_agency != sender_agency:
        raise EnvelopeError("malformed", "this referral was sent by another agency")
    if not grants:
        raise EnvelopeError("malformed", "no consent to add")
    disclosures, wrapped_keys = _wrap_grants(random, opened, grants)
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
        old,
        _model(Amendment, body),
        sender_sig_public=sig_public,
        fids=opened.fids.values(),
        recipients=opened.requests,
        max_recipients=2**31,
    )
    return body


def _wrap_grants(
    random: RandomSource, opened: Opened, grants: Sequence[Grant]
) -> tuple[list[str], list[dict[str, str]]]:
    """Each grant's disclosure and wrapped key, with the field key ``opened`` verified."""
    disclosures: list[str] = []
    wrapped_keys: list[dict[str, str]] = []
    for g in grants:
        if g.field not in opened.fids:
            raise EnvelopeError("field-mismatch", f"the referral has no field {g.field!r}")
        fid = opened.fids[g.field]
        d, entry = _wrap(
            random,
            fid,
            g.recipient,
            g.enc_public,
            opened.field_keys[fid],
            g.purpose,
            g.expires_at,
            g.release_ref,
        )
        disclosures.append(d)
        wrapped_keys.append(entry)
    return disclosures, wrapped_keys
