"""Salted disclosures (RFC 9901 section 4.2): building, digesting and parsing one,
and checking the disclosures of a referral as a set (each digest in the
manifest, none twice, one per field, grant or request), which the server's
checks and the client's opening share; and a ciphertext against its field
disclosure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pydantic

from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode
from app.crypto.envelope.common import (
    NONCE_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    DisclosureType,
    EnvelopeError,
    _canonical,
    _equal,
    _first_error,
    _loads_strict,
    _sha256,
)
from app.crypto.wire import FieldValue, GrantValue, RequestValue


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


_LIST_ADAPTERS: dict[str, pydantic.TypeAdapter[Any]] = {
    "field": pydantic.TypeAdapter(list[FieldValue]),
    "grant": pydantic.TypeAdapter(list[GrantValue]),
    "request": pydantic.TypeAdapter(list[RequestValue]),
}


def _unvalidated(disclosure: object) -> tuple[DisclosureType, Any]:
    """A disclosure's type and value, every check but the value's model passed."""
    if not isinstance(disclosure, str):
        raise EnvelopeError("bad-disclosure", "a disclosure must be a base64url string")
    try:
        array = _loads_strict(b64url_decode(disclosure).decode("utf-8"))
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
    if not (isinstance(kind, str) and kind in _VALUE_MODELS):
        raise EnvelopeError("bad-disclosure", "a disclosure's type must be field, grant or request")
    return cast(DisclosureType, kind), value


def parse_disclosure(disclosure: object) -> Disclosed:
    """Decode and validate one disclosure; raises ``bad-disclosure``."""
    kind, value = _unvalidated(disclosure)
    try:
        # model_validate(value, strict=True) without its wrapper
        parsed = _VALUE_MODELS[kind].__pydantic_validator__.validate_python(value, strict=True)
    except pydantic.ValidationError as exc:
        raise EnvelopeError("bad-disclosure", f"{kind} disclosure: {_first_error(exc)}") from None
    assert isinstance(disclosure, str)  # noqa: S101 (_unvalidated refuses anything else)
    return Disclosed(disclosure, disclosure_digest(disclosure), kind, parsed)


def parse_disclosures(disclosures: Sequence[object]) -> list[Disclosed]:
    """:func:`parse_disclosure` of each, in order, raising the first one's error; the
    values of each type validated in one pydantic call (when one of them is refused,
    each is parsed again in order, so that the first error is the one raised)."""
    checked: list[tuple[str, DisclosureType, Any]] = []
    failure: EnvelopeError | None = None
    for item in disclosures:
        try:
            kind, value = _unvalidated(item)
        except EnvelopeError as exc:
            failure = exc  # raised unless an earlier value is refused by its model
            break
        assert isinstance(item, str)  # noqa: S101 (_unvalidated refuses anything else)
        checked.append((item, kind, value))
    by_kind: dict[str, list[Any]] = {kind: [] for kind in _VALUE_MODELS}
    for _, kind, value in checked:
        by_kind[kind].append(value)
    try:
        models = {
            kind: iter(_LIST_ADAPTERS[kind].validate_python(values, strict=True))
            for kind, values in by_kind.items()
            if values
        }
    except pydantic.ValidationError:
        return [parse_disclosure(item) for item in disclosures]  # raises the first error
    if failure is not None:
        raise failure
    return [
        Disclosed(item, disclosure_digest(item), kind, next(models[kind]))
        for item, kind, _ in checked
    ]


@dataclass
class _Set:
    """Disclosures of one referral by what they disclose."""

    fields: dict[str, Disclosed] = field(default_factory=dict)  # fid ->
    grants: dict[tuple[str, str], Disclosed] = field(default_factory=dict)  # (fid, recipient) ->
    requests: dict[str, Disclosed] = field(default_factory=dict)  # recipient ->

    @classmethod
    def of(cls, disclosed: Iterable[Disclosed]) -> _Set:
        s = cls()
        for d in disclosed:
            s.add(d)
        return s

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
