"""RFC 8785 JSON Canonicalization Scheme (JCS).

Everything refgate signs or hashes as JSON (envelope manifests, audit leaves)
goes through :func:`canonical_json`, so two implementations that agree on the
data agree on the bytes. This module first walks the value and refuses anything
that JCS cannot represent unambiguously, so that a caller never gets bytes for
a value another implementation would reject or spell differently.

Serialization: a value without floats whose object keys are all below U+E000
(every manifest and audit event refgate writes) is serialized by the standard
library's C encoder, which for such values produces exactly the JCS bytes:

- members sorted by code point equal sorted by UTF-16 code unit below U+E000
  (the orders differ only between U+E000..U+FFFF and astral characters);
- ``ensure_ascii=False`` escapes only ``"``, ``\\`` and U+0000..U+001F, with
  the same short forms (``\\b \\f \\n \\r \\t``) and lower-case
  ``\\u00xx`` as ECMAScript's JSON.stringify, which JCS adopts;
- integers in the safe range print the same in both.

Anything else (a float, an exotic key) goes to the ``rfc8785`` package, a
pure-Python implementation about ten times slower. ``tests/crypto`` checks the
two agree on generated values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeAlias

import rfc8785

__all__ = [
    "MAX_DEPTH", "MAX_SAFE_INTEGER", "CanonicalizationError", "canonical_json", "canonical_text",
    "encode_plain", "is_plain",
]

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer magnitude accepted (I-JSON, RFC 7493 section 2.2)."""

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted."""

_Json: TypeAlias = None | bool | int | float | str | list["_Json"] | dict[str, "_Json"]


class CanonicalizationError(ValueError):
    """The value has no RFC 8785 canonical form (or is outside what we accept)."""


def canonical_json(obj: object) -> bytes:
    """Return the RFC 8785 (JCS) UTF-8 bytes of ``obj``.

    Accepted: ``None``, ``bool``, ``int`` within +/-(2**53 - 1), finite
    ``float``, ``str``, lists and tuples, and mappings whose keys are ``str``.
    Object members are sorted by the UTF-16 code units of their names; strings
    are emitted as UTF-8 with only the escapes JCS prescribes; numbers use the
    ECMAScript shortest round-trip form.

    Guarantees: equal JSON data gives equal bytes, and the bytes parse back to
    the same data. Raises :class:`CanonicalizationError` (and never returns
    partial output) for any other type, non-string keys, strings containing
    lone surrogates, NaN or infinities, integers outside the safe range, or
    nesting deeper than :data:`MAX_DEPTH`. Python dicts cannot hold duplicate
    keys, so the output never contains a duplicate member name.
    """
    walk = _Walk()
    normalized = walk.normalize(obj, 0)
    if not walk.exotic:
        return _FAST.encode(normalized).encode("utf-8")
    try:
        return rfc8785.dumps(normalized)
    except rfc8785.CanonicalizationError as exc:  # defensive: _normalize refuses these first
        raise CanonicalizationError(str(exc)) from exc


def _check_str(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalizationError("string is not valid Unicode (lone surrogate)") from exc
    return str(value)


_FAST = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)
_KEY_ORDER_SAFE = "\ue000"  # below this, code point order is UTF-16 code unit order


def encode_plain(value: Any) -> str:
    """The RFC 8785 text of a value :func:`is_plain` holds (or that a model's patterns
    keep plain): the standard encoder ``canonical_json`` hands such values to,
    without its normalising walk."""
    return _FAST.encode(value)


def canonical_text(value: Any) -> str:
    """``canonical_json(value).decode()``, without the walk when ``value`` is plain."""
    if is_plain(value):
        return encode_plain(value)
    return canonical_json(value).decode("utf-8")


def _unicode(text: str) -> bool:
    """No lone surrogate (``canonical_json`` refuses those)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_plain(value: Any, depth: int = 0) -> bool:
    """True when ``canonical_json(value)`` is the standard encoder's output for ``value``
    as it is: exact ``dict``/``list``/``tuple``/``str``/``int``/``bool``/``None`` within
    its limits (no float, no key at or above U+E000, no lone surrogate, integers in
    the safe range, nesting within ``MAX_DEPTH``), which its normalization leaves
    unchanged and which it hands to the same encoder. Anything else (and anything it
    refuses) goes to ``canonical_json`` itself."""
    if depth > MAX_DEPTH:
        return False
    kind = type(value)
    if kind is str:
        return value.isascii() or _unicode(value)
    if value is None or kind is bool:
        return True
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER)
    if kind is not dict and kind is not list and kind is not tuple:
        return False
    if depth == MAX_DEPTH:  # a member would be deeper than canonical_json accepts
        return not value
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str or not (
                k.isascii() or (_unicode(k) and max(k) < _KEY_ORDER_SAFE)
            ):
                return False
            if not (v is None or (type(v) is str and v.isascii()) or is_plain(v, depth + 1)):
                return False
        return True
    for v in value:
        if not ((type(v) is str and v.isascii()) or is_plain(v, depth + 1)):
            return False
    return True


class _Walk:
    """One normalization: copies the value and notes whether it needs ``rfc8785``."""

    __slots__ = ("exotic",)

    def __init__(self) -> None:
        self.exotic = False  # a float, or a key whose order could differ

    def normalize(self, obj: object, depth: int) -> _Json:
        """Copy ``obj`` into plain dict/list/scalars, refusing what JCS cannot encode."""
        if depth > MAX_DEPTH:
            raise CanonicalizationError(f"nesting deeper than {MAX_DEPTH}")
        if obj is None or isinstance(obj, bool):
            return obj
        if isinstance(obj, str):
            return _check_str(obj)
        if isinstance(obj, int):
            if not -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:
                raise CanonicalizationError("integer outside +/-(2**53 - 1)")
            return int(obj)
        if isinstance(obj, float):
            if not math.isfinite(obj):
                raise CanonicalizationError("NaN and infinities have no JSON form")
            self.exotic = True
            return float(obj)
        if isinstance(obj, list | tuple):
            return [self.normalize(item, depth + 1) for item in obj]
        if isinstance(obj, Mapping):
            out: dict[str, _Json] = {}
            for key, value in obj.items():
                if not isinstance(key, str):
                    raise CanonicalizationError("object keys must be strings")
                name = _check_str(key)
                if name in out:
                    raise CanonicalizationError("duplicate object key")
                if name and max(name) >= _KEY_ORDER_SAFE:
                    self.exotic = True
                out[name] = self.normalize(value, depth + 1)
            return out
        raise CanonicalizationError(f"unsupported type {type(obj).__name__}")
