"""Strict JSON request bodies for signed documents.

Signed envelopes are parsed from the raw bytes, not through a model that could
coerce or drop members: the server must check exactly what the sender signed.
Duplicate keys, non-UTF-8, NaN/Infinity and absurd nesting are refused.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from app import errors

MAX_DEPTH = 32


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


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
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
        _check_tree(value, MAX_DEPTH)
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
