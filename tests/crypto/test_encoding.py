"""Strict base64url: exactly one accepted spelling per byte string.

``b64url_decode`` is written for speed (it decodes every ciphertext, key and
disclosure of a referral); this checks it against the obvious definition,
decode leniently and accept only if re-encoding gives back the same text.
"""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode

URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def reference(text: str) -> bytes | None:
    """The canonical decoding of ``text``, or None when it is not one."""
    if any(c not in URL_ALPHABET for c in text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if b64url_encode(data) == text else None


def decoded(text: str) -> bytes | None:
    try:
        return b64url_decode(text)
    except EncodingError:
        return None


@given(st.binary(max_size=200))
def test_round_trip(data: bytes) -> None:
    assert b64url_decode(b64url_encode(data)) == data


# near-valid text: the alphabet and the characters a sloppy encoder or an attacker adds
NEAR = st.text(alphabet=URL_ALPHABET + "+/=\n \t.é\x00", max_size=40)


@settings(max_examples=3000)
@given(st.one_of(NEAR, st.text(alphabet=URL_ALPHABET, max_size=40), st.text(max_size=12)))
def test_agrees_with_decode_then_reencode(text: str) -> None:
    assert decoded(text) == reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "QQ",  # canonical "A"
        "QR",  # same byte, spare bits set
        "QUI",  # canonical "AB"
        "QUJ",  # spare bits set
        "QUJD",  # "ABC"
        "QUJD\n",
        "QUJD=",
        "QQ==",
        "Q",
        "QU+D",
        "QU/D",
        " QUJD",
        "QUJ\u00e9",
    ],
)
def test_edge_cases(text: str) -> None:
    assert decoded(text) == reference(text)
    if reference(text) is None:
        with pytest.raises(EncodingError):
            b64url_decode(text)


def test_length() -> None:
    assert b64url_decode(b64url_encode(b"x" * 16), length=16) == b"x" * 16
    with pytest.raises(EncodingError, match="expected 32 bytes, got 16"):
        b64url_decode(b64url_encode(b"x" * 16), length=32)


def test_not_a_string() -> None:
    with pytest.raises(EncodingError):
        b64url_decode(b"QUJD")  # type: ignore[arg-type]


_OLD_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_OLD_SPARE_BITS = {2: 0x0F, 3: 0x03}
_OLD_VALUE = {c: i for i, c in enumerate(URL_ALPHABET.encode())}


def previous_b64url_decode(text: object, *, length: int | None = None) -> bytes:
    """``b64url_decode`` before one translate screened "+", "/" and "=" (kept to hold the
    new one to it: the same bytes, the same refusals with the same messages)."""
    if not isinstance(text, str) or not text.isascii():
        raise EncodingError("not base64url without padding")
    spare = len(text) % 4
    raw = text.encode("ascii")
    if spare == 1 or b"+" in raw or b"/" in raw or b"=" in raw:
        raise EncodingError("not base64url without padding")
    try:
        data = binascii.a2b_base64(
            raw.translate(_OLD_URL_TO_STD) + b"=" * (-spare % 4), strict_mode=True
        )
    except binascii.Error:
        raise EncodingError("not base64url without padding") from None
    if spare and _OLD_VALUE[raw[-1]] & _OLD_SPARE_BITS[spare]:
        raise EncodingError("non-canonical base64url")
    if length is not None and len(data) != length:
        raise EncodingError(f"expected {length} bytes, got {len(data)}")
    return data


def outcome(decode: object, text: object, length: int | None) -> tuple[str, object]:
    try:
        return "ok", decode(text, length=length)  # type: ignore[operator]
    except EncodingError as exc:
        return "refused", str(exc)


@settings(max_examples=3000)
@given(
    st.one_of(
        NEAR,
        st.text(alphabet=URL_ALPHABET, max_size=40),
        st.text(max_size=12),
        st.binary(max_size=40).map(b64url_encode),
        st.binary(max_size=12),
        st.none(),
    ),
    st.one_of(st.none(), st.integers(0, 30)),
)
def test_same_as_previous_implementation(text: object, length: int | None) -> None:
    assert outcome(b64url_decode, text, length) == outcome(previous_b64url_decode, text, length)
