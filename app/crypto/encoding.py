"""Binary encodings used on the wire.

Binary values travel as base64url without padding (DESIGN.md, "Wire format");
Merkle hashes in checkpoints and proofs use standard base64. Decoding is strict:
anything that is not the canonical encoding of some byte string is refused, so
one value never has two spellings.
"""

from __future__ import annotations

import base64
import binascii
import re

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


class EncodingError(ValueError):
    """A value is not valid base64url / base64 of the expected length."""


def b64url_encode(data: bytes) -> str:
    """Encode bytes as base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, length: int | None = None) -> bytes:
    """Decode unpadded base64url strictly; optionally require an exact byte length."""
    if not isinstance(text, str) or not _B64URL.match(text) or len(text) % 4 == 1:
        raise EncodingError("not base64url without padding")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise EncodingError("not base64url without padding") from exc
    if b64url_encode(data) != text:
        raise EncodingError("non-canonical base64url")
    if length is not None and len(data) != length:
        raise EncodingError(f"expected {length} bytes, got {len(data)}")
    return data


def b64_encode(data: bytes) -> str:
    """Standard base64 with padding (checkpoints, proofs)."""
    return base64.b64encode(data).decode("ascii")


def b64_decode(text: str, *, length: int | None = None) -> bytes:
    """Strict standard base64 with padding."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise EncodingError("not standard base64") from exc
    if b64_encode(data) != text:
        raise EncodingError("non-canonical base64")
    if length is not None and len(data) != length:
        raise EncodingError(f"expected {length} bytes, got {len(data)}")
    return data
