"""What every part of Envelope v2 shares: the version, the sizes and domain
prefixes, :class:`EnvelopeError` and its codes, and the small primitives
(SHA-256, constant-time comparison, AAD, key commitment, canonical JSON,
strict JSON parsing, field-name and model validation)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Any, Literal

import nacl.encoding
import nacl.hash
import pydantic

from app import vocab
from app.crypto.canonical import CanonicalizationError, canonical_json
from app.crypto.strict_json import StrictDecoder
from app.crypto.wire import FIELD_NAME_RE

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
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_loads_strict = StrictDecoder(_no_duplicates, _refuse_constant).loads


def _first_error(exc: pydantic.ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    return f"{where}: {err['msg']}"


_NAME = re.compile(FIELD_NAME_RE[1:-1])


def _valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def _model(model: type[Any], value: object) -> Any:
    try:
        return model.model_validate(value, strict=True)
    except pydantic.ValidationError as exc:
        raise EnvelopeError("malformed", _first_error(exc)) from None
