"""The signed manifest: the exact bytes signed, signing and verifying them, and
the digest list's padding with decoys (sorted, unique, a multiple of 8)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from app.crypto import keys
from app.crypto.canonical import encode_plain
from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode
from app.crypto.envelope.common import (
    HASH_SIZE,
    MANIFEST_PREFIX,
    PAD_TO,
    EnvelopeError,
    RandomSource,
    _canonical,
)
from app.crypto.wire import Manifest


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
    canonical = _manifest_bytes(manifest)
    if not keys.verify(sig_public, MANIFEST_PREFIX + canonical, raw):
        raise EnvelopeError("bad-signature", "the manifest signature does not verify")
    return canonical


def _manifest_bytes(manifest: Manifest) -> bytes:
    """The RFC 8785 bytes of a validated manifest, ``_canonical(manifest.model_dump())``
    without its walk: the model admits only ASCII strings (its patterns), ``v`` 2, a
    ``version`` in 1..1,000,000 and a list of ASCII strings, which the standard library's
    encoder writes as JCS does (``tests/crypto`` holds the two equal)."""
    return encode_plain(manifest.model_dump()).encode("utf-8")


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
