"""The strict body parser (``app.jsonbody.parse_strict``) against its previous
implementation: a shared decoder, a cheaper duplicate-key hook and a depth-only
walk where the text holds no ``\\u0000`` must accept the same bodies with the
same values and refuse the same ones with the same message (issue 20)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import errors
from app.jsonbody import MAX_DEPTH, parse_strict


def _old_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _old_refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _old_check_tree(value: Any, limit: int) -> None:
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


def previous_parse_strict(raw: bytes) -> Any:
    """``parse_strict`` as it was before issue 20."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text, object_pairs_hook=_old_no_duplicates, parse_constant=_old_refuse_constant
        )
        _old_check_tree(value, MAX_DEPTH)
    except UnicodeDecodeError:
        raise errors.BadRequest("the body is not UTF-8", slug="invalid-json") from None
    except RecursionError:
        raise errors.BadRequest("the body is nested too deeply", slug="invalid-json") from None
    except ValueError as exc:
        raise errors.BadRequest(f"the body is not valid JSON: {exc}", slug="invalid-json") from None
    return value


def outcome(parse: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(raw)
    except errors.AppError as exc:
        return "refused", (type(exc).__name__, exc.type, exc.detail)


KEYS = st.sampled_from(["a", "b", "a\x00", "\x00", "k" * 70, "é", "\ud800"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet="ab\x00\\\"\u00e9\ud800\n", max_size=6),
)


def _pairs(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # lists of pairs so that a key may appear twice (rendered by _render)
    return st.lists(st.tuples(KEYS, children), max_size=4).map(lambda p: ("obj", p))


TREES = st.recursive(
    SCALARS, lambda c: st.one_of(st.lists(c, max_size=4), _pairs(c)), max_leaves=12
)


def _render(value: Any) -> str:
    if isinstance(value, tuple):
        return "{" + ",".join(json.dumps(k) + ":" + _render(v) for k, v in value[1]) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_render(v) for v in value) + "]"
    return json.dumps(value)


def _nest(text: str, depth: int, kind: str) -> str:
    opened, closed = ("[", "]") if kind == "list" else ('{"x":', "}")
    return opened * depth + text + closed * depth


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    text = _render(draw(TREES))
    if draw(st.booleans()):
        text = _nest(text, draw(st.integers(0, 40)), draw(st.sampled_from(["list", "obj"])))
    mutation = draw(st.sampled_from(["none", "bom", "nan", "cut", "ctrl", "bytes", "escape"]))
    if mutation == "bom":
        text = "\ufeff" + text
    elif mutation == "nan":
        text = "[" + text + "," + draw(st.sampled_from(["NaN", "Infinity", "-Infinity"])) + "]"
    elif mutation == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif mutation == "ctrl":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["\x00", "\n", "\x01", '"\x00"'])) + text[at:]
    elif mutation == "escape":
        text = '["\\\\u0000",' + text + "]"
    raw = text.encode("utf-8", "surrogatepass")
    if mutation == "bytes":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + raw[at:]
    return raw


@settings(max_examples=3000)
@given(bodies())
def test_same_as_previous_implementation(raw: bytes) -> None:
    assert outcome(parse_strict, raw) == outcome(previous_parse_strict, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":1,"a":2}',
        b'{"a":{"b":1,"c":2,"b":3}}',
        b'{"a":"\\u0000"}',
        b'{"\\u0000":1}',
        b'["\\\\u0000"]',
        b"\xef\xbb\xbf{}",
        b"[NaN]",
        b"[1e400]",
        b"[" * 32 + b"]" * 32,
        b"[" * 33 + b"]" * 33,
        b"[" * 32 + b"1" + b"]" * 32,
        b"[" * 32 + b'"\\u0000"' + b"]" * 32,
        b"[" * 33 + b'"\\u0000"' + b"]" * 33,
        b"[" * 5000 + b"]" * 5000,
        b'{"a":1}x',
        b"",
        b"\xff",
    ],
)
def test_edge_cases(raw: bytes) -> None:
    assert outcome(parse_strict, raw) == outcome(previous_parse_strict, raw)
