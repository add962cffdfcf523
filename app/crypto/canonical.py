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
from typing import TypeAlias

import rfc8785

__all__ = ["MAX_DEPTH", "MAX_SAFE_INTEGER", "CanonicalizationError", "canonical_json"]

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
