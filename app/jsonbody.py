"""Strict JSON request bodies for signed documents.

Signed envelopes are parsed from the raw bytes, not through a model that could
coerce or drop members: the server must check exactly what the sender signed.
Duplicate keys, non-UTF-8, NaN/Infinity and absurd nesting are refused.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from app import errors
from app.crypto.strict_json import StrictDecoder

MAX_DEPTH = 32


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # name the first key seen twice
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_loads = StrictDecoder(_no_duplicates, _refuse_constant).loads


def _check_depth(value: Any, limit: int) -> None:
    """Refuse a value (a container or not) deeper than ``limit``: :func:`_check_tree`
    for a value that holds no NUL, one level at a time."""
    level = [value]
    depth = 1
    while level:
        if depth > limit:
            raise ValueError(f"nested deeper than {limit}")
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                below.extend(item.values())
            elif isinstance(item, list):
                below.extend(item)
        level = below
        depth += 1


def _check_tree(value: Any, limit: int) -> None:
    """Refuse nesting deeper than ``limit`` and NUL characters anywhere."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise ValueError(f"nested deeper than {limit}")
        if isinstance(item, str) and "\x00" in item:
            raise ValueError("NUL characters are not allowed")
        if isinstance(item, dict):
            if any("\x00" in k for k in item):
                raise ValueError("NUL characters are not allowed")
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def parse_strict(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
        value = _loads(text)
        # a NUL reaches a parsed string or key only as the escape \u0000 (the decoder
        # refuses raw control characters): without one, only the depth is left to check
        if "\\u0000" in text:
            _check_tree(value, MAX_DEPTH)
        else:
            _check_depth(value, MAX_DEPTH)
    except UnicodeDecodeError:
        raise errors.BadRequest("the body is not UTF-8", slug="invalid-json") from None
    except RecursionError:
        raise errors.BadRequest("the body is nested too deeply", slug="invalid-json") from None
    except ValueError as exc:
        raise errors.BadRequest(f"the body is not valid JSON: {exc}", slug="invalid-json") from None
    return value


async def json_object(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise errors.UnsupportedMediaType("the body must be application/json")
    value = parse_strict(await request.body())
    if not isinstance(value, dict):
        raise errors.BadRequest("the body must be a JSON object", slug="invalid-json")
    return value
