"""Opening a referral (a recipient, or the sender): :func:`open_envelope`
verifies the signature, every digest, hash, kid and key commitment before it
decrypts, and returns everything the caller may read or raises."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.secret

from app.crypto import keys
from app.crypto.encoding import b64url_decode
from app.crypto.envelope.common import (
    FIELD_KEY_SIZE,
    EnvelopeError,
    _aad,
    _equal,
    _loads_strict,
    _model,
    _sha256,
    _valid_name,
    commitment,
)
from app.crypto.envelope.disclosures import _check_ciphertext, _disclosed, _grant_value, _Set
from app.crypto.envelope.manifest import _verify_manifest
from app.crypto.wire import FieldValue, GrantValue, Manifest, RequestValue, WrappedKeyIn


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
    manifest = _verified_manifest(document, sender_sig_public)
    disclosures = document["disclosures"]
    if not isinstance(disclosures, list):
        raise EnvelopeError("malformed", "disclosures must be a list")
    s = _Set.of(_disclosed(disclosures, frozenset(manifest.digests)))
    ciphertexts = document.get("ciphertexts") or {}
    if not isinstance(ciphertexts, Mapping):
        raise EnvelopeError("malformed", "ciphertexts must be an object")
    wrapped = document["wrapped_keys"]
    if not isinstance(wrapped, list):
        raise EnvelopeError("malformed", "wrapped_keys must be a list")
    fields, fids, field_keys = _open_fields(
        wrapped, ciphertexts, s, manifest, agency_id=agency_id, enc_private=enc_private
    )
    return Opened(
        manifest,
        fields,
        fids,
        [_grant_value(d) for d in s.grants.values()],
        {r: d.value for r, d in s.requests.items() if isinstance(d.value, RequestValue)},
        field_keys,
    )


def _verified_manifest(document: Mapping[str, Any], sender_sig_public: bytes) -> Manifest:
    """The document's manifest, its signature verified (the document has every member)."""
    if not isinstance(document, Mapping):
        raise EnvelopeError("malformed", "the referral must be a JSON object")
    for member in ("manifest", "signature", "disclosures", "wrapped_keys"):
        if member not in document:
            raise EnvelopeError("malformed", f"the referral has no {member!r}")
    manifest: Manifest = _model(Manifest, document["manifest"])
    signature = document["signature"]
    if not isinstance(signature, str):
        raise EnvelopeError("malformed", "signature must be a string")
    _verify_manifest(manifest, signature, sender_sig_public)
    return manifest


def _open_fields(
    wrapped: list[Any],
    ciphertexts: Mapping[str, Any],
    s: _Set,
    manifest: Manifest,
    *,
    agency_id: str,
    enc_private: bytes,
) -> tuple[dict[str, str], dict[str, str], dict[str, bytes]]:
    """Unwrap each key addressed to ``agency_id`` and decrypt its field: (values by
    name, fids by name, field keys by fid); no name twice."""
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
    return fields, fids, field_keys


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
        value = _loads_strict(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EnvelopeError("invalid-field", f"field {fid} is not JSON") from None
    if not (
        isinstance(value, dict)
        and set(value) == {"name", "value"}
        and isinstance(value["name"], str)
        and _valid_name(value["name"])
        and isinstance(value["value"], str)
    ):
        raise EnvelopeError(
            "invalid-field", f'field {fid} is not {{"name", "value"}} with a valid name'
        )
    return value["name"], value["value"]
