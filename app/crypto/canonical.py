"""RFC 8785 JSON Canonicalization Scheme (JCS).

Everything refgate signs or hashes as JSON (envelope manifests, audit leaves)
goes through :func:`canonical_json`, so two implementations that agree on the
data agree on the bytes. Serialization itself is delegated to the ``rfc8785``
package; this module first walks the value and refuses anything that JCS
cannot represent unambiguously, so that a caller never gets bytes for a value
another implementation would reject or spell differently.
"""

from __future__ import annotations

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
    normalized = _normalize(obj, 0)
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


def _normalize(obj: object, depth: int) -> _Json:
    """Copy ``obj`` into plain dict/list/scalars, refusing what JCS cannot encode."""
    if depth > MAX_DEPTH:
        raise CanonicalizationError(f"nesting deeper than {MAX_DEPTH}")
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        if not -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:
            raise CanonicalizationError("integer outside +/-(2**53 - 1)")
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise CanonicalizationError("NaN and infinities have no JSON form")
        return float(obj)
    if isinstance(obj, str):
        return _check_str(obj)
    if isinstance(obj, list | tuple):
        return [_normalize(item, depth + 1) for item in obj]
    if isinstance(obj, Mapping):
        out: dict[str, _Json] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CanonicalizationError("object keys must be strings")
            name = _check_str(key)
            if name in out:
                raise CanonicalizationError("duplicate object key")
            out[name] = _normalize(value, depth + 1)
        return out
    raise CanonicalizationError(f"unsupported type {type(obj).__name__}")
