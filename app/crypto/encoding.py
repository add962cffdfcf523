"""Binary encodings used on the wire.

Binary values travel as base64url without padding (DESIGN.md, "Wire format");
Merkle hashes in checkpoints and proofs use standard base64. Decoding is strict:
anything that is not the canonical encoding of some byte string is refused, so
one value never has two spellings.
"""

from __future__ import annotations

import base64
import binascii

# "-" and "_" become "+" and "/"; "+", "/" and "=" (which base64url has not) become "!",
# which strict a2b_base64 refuses, so one translate both maps and screens the input
_URL_TO_STD = bytes.maketrans(b"-_+/=", b"+/!!!")
_PAD = (b"", b"", b"==", b"=")  # by len % 4 (1 is refused before)
# the last character of an unpadded encoding carries 4 (2 chars over a group) or
# 2 (3 chars over) bits that are not data; canonical encodings have them zero
_SPARE_BITS = {2: 0x0F, 3: 0x03}
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}


class EncodingError(ValueError):
    """A value is not valid base64url / base64 of the expected length."""


def b64url_encode(data: bytes) -> str:
    """Encode bytes as base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, length: int | None = None) -> bytes:
    """Decode unpadded base64url strictly; optionally require an exact byte length.

    Strict: only the 64 URL-safe characters, no padding, no whitespace, and the
    unused bits of the last character zero, so that each byte string has exactly
    one accepted spelling (``tests/crypto/test_encoding.py`` checks this against
    decode-then-re-encode, and the messages against the previous implementation).
    Every ciphertext, key, salt and disclosure of a referral goes through here,
    hence no regular expression and no re-encoding.
    """
    spare = len(text) % 4 if isinstance(text, str) else 1
    if spare == 1:
        raise EncodingError("not base64url without padding")
    try:
        raw = text.encode("ascii")
        data = binascii.a2b_base64(raw.translate(_URL_TO_STD) + _PAD[spare], strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        raise EncodingError("not base64url without padding") from None
    if spare and _VALUE[raw[-1]] & _SPARE_BITS[spare]:
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
