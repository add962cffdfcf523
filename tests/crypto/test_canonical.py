"""RFC 8785 (JCS): the published examples, then properties over arbitrary JSON."""

from __future__ import annotations

import decimal
import json
import math
import random
import struct
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.crypto.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    CanonicalizationError,
    canonical_json,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None)


def test_rfc8785_sorting_example_orders_keys_by_utf16_code_units() -> None:
    # RFC 8785 section 3.2.3. U+1F600 is the surrogate pair D83D DE00 in UTF-16, so it
    # sorts before U+FB33 although its code point is larger: code-point order would differ.
    parsed = json.loads(
        '{"\\u20ac": "Euro Sign", "\\r": "Carriage Return", '
        '"\\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One", '
        '"\\ud83d\\ude00": "Emoji: Grinning Face", "\\u0080": "Control", '
        '"\\u00f6": "Latin Small Letter O With Diaeresis"}'
    )
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical_json(parsed) == expected.encode("utf-8")
    assert sorted(parsed)[-1] == "\U0001f600"  # code-point order would put it last


def test_rfc8785_section_3_2_2_example() -> None:
    text = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],'
        '"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(json.loads(text)) == expected.encode("utf-8")


def test_jcs_reference_example_utf8_bytes() -> None:
    # Input and UTF-8 hex dump from the README of the JCS reference implementation
    # (github.com/cyberphone/json-canonicalization).
    text = (
        '{"numbers": [1E30,4.50,6,2e-3,0.000000000000000000000000001],'
        ' "escaping": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "other":  [null, true, false]}'
    )
    expected = bytes.fromhex(
        "7b 22 65 73 63 61 70 69 6e 67 22 3a 22 e2 82 ac 24 5c 75 30 30 30 66 5c 6e 41 27 42 5c 22"
        "5c 5c 5c 5c 5c 22 2f 22 2c 22 6e 75 6d 62 65 72 73 22 3a 5b 31 65 2b 33 30 2c 34 2e 35 2c"
        "36 2c 30 2e 30 30 32 2c 31 65 2d 32 37 5d 2c 22 6f 74 68 65 72 22 3a 5b 6e 75 6c 6c 2c 74"
        "72 75 65 2c 66 61 6c 73 65 5d 7d"
    )
    assert canonical_json(json.loads(text)) == expected


@pytest.mark.parametrize(
    ("ieee_hex", "expected"),
    [
        ("0000000000000000", "0"),
        ("8000000000000000", "0"),
        ("0000000000000001", "5e-324"),
        ("8000000000000001", "-5e-324"),
        ("7fefffffffffffff", "1.7976931348623157e+308"),
        ("ffefffffffffffff", "-1.7976931348623157e+308"),
        ("4340000000000000", "9007199254740992"),
        ("c340000000000000", "-9007199254740992"),
        ("4430000000000000", "295147905179352830000"),
        ("44b52d02c7e14af5", "9.999999999999997e+22"),
        ("44b52d02c7e14af6", "1e+23"),
        ("44b52d02c7e14af7", "1.0000000000000001e+23"),
        ("444b1ae4d6e2ef4e", "999999999999999700000"),
        ("444b1ae4d6e2ef4f", "999999999999999900000"),
        ("444b1ae4d6e2ef50", "1e+21"),
        ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
        ("3eb0c6f7a0b5ed8d", "0.000001"),
        ("41b3de4355555553", "333333333.3333332"),
        ("41b3de4355555554", "333333333.33333325"),
        ("41b3de4355555555", "333333333.3333333"),
        ("41b3de4355555556", "333333333.3333334"),
        ("41b3de4355555557", "333333333.33333343"),
        ("becbf647612f3696", "-0.0000033333333333333333"),
        ("43143ff3c1cb0959", "1424953923781206.2"),
    ],
)
def test_rfc8785_appendix_b_numbers(ieee_hex: str, expected: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(ieee_hex))
    assert canonical_json(value) == expected.encode("ascii")


@pytest.mark.parametrize("ieee_hex", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_rfc8785_appendix_b_nan_and_infinity_are_refused(ieee_hex: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(ieee_hex))
    with pytest.raises(CanonicalizationError):
        canonical_json(value)
    with pytest.raises(CanonicalizationError):
        canonical_json({"x": [value]})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, b"0"),
        (-1, b"-1"),
        (42, b"42"),
        (MAX_SAFE_INTEGER, b"9007199254740991"),
        (-MAX_SAFE_INTEGER, b"-9007199254740991"),
        (True, b"true"),
        (False, b"false"),
        (None, b"null"),
        (1.0, b"1"),
        (-0.0, b"0"),
    ],
)
def test_scalars(value: object, expected: bytes) -> None:
    assert canonical_json(value) == expected


@pytest.mark.parametrize("value", [MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**64])
def test_integers_outside_the_safe_range_are_refused(value: int) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_json({"n": value})


def test_string_escaping_is_minimal() -> None:
    controls = "".join(chr(c) for c in range(0x20))
    assert canonical_json(controls) == (
        b'"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r'
        b"\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018"
        b'\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f"'
    )
    # Quote and backslash are escaped; '/', DEL, non-ASCII and astral characters are not.
    assert canonical_json('"\\/\x7f\u00e9\u2028\U0001f600<>&') == (
        '"\\"\\\\/\x7f\u00e9\u2028\U0001f600<>&"'.encode()
    )


def test_nested_structures_sort_every_object_and_keep_array_order() -> None:
    value = {
        "b": [3, 1, {"z": None, "a": [True, False]}],
        "a": {"y": "x", "x": {"c": 1, "b": 2}},
        "": 0,
    }
    assert canonical_json(value) == (
        b'{"":0,"a":{"x":{"b":2,"c":1},"y":"x"},"b":[3,1,{"a":[true,false],"z":null}]}'
    )


def test_tuples_and_read_only_mappings_serialize_like_lists_and_dicts() -> None:
    assert canonical_json(MappingProxyType({"k": (1, "2")})) == b'{"k":[1,"2"]}'


@pytest.mark.parametrize(
    "value",
    [
        "\ud800",
        "a\udfffb",
        {"\ud83d": 1},
        {"k": ["ok", "\udc00"]},
        {1: "int key"},
        {("t",): "tuple key"},
        {b"k": "bytes key"},
        b"bytes",
        {1, 2},
        decimal.Decimal("1.5"),
        object(),
        float("nan"),
        math.inf,
    ],
)
def test_values_without_a_jcs_form_are_refused(value: object) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_json(value)


def test_canonicalization_error_is_a_value_error() -> None:
    assert issubclass(CanonicalizationError, ValueError)


def test_nesting_limit() -> None:
    deep: object = "leaf"
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert canonical_json(deep).startswith(b"[[")
    with pytest.raises(CanonicalizationError):
        canonical_json([deep])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def _utf16_sorted(value: object) -> bool:
    if isinstance(value, dict):
        names = [k.encode("utf-16-be") for k in value]
        return names == sorted(names) and all(_utf16_sorted(v) for v in value.values())
    if isinstance(value, list):
        return all(_utf16_sorted(v) for v in value)
    return True


def _ijson_int(text: str) -> int | float:
    # As an I-JSON reader would: integers beyond 2**53 are doubles (integral floats print
    # as plain digits, e.g. 2.0**60).
    number = int(text)
    return number if abs(number) <= MAX_SAFE_INTEGER else float(number)


@PROPERTY
@given(json_values)
def test_output_parses_back_to_the_same_data_and_is_a_fixed_point(value: object) -> None:
    out = canonical_json(value)
    parsed = json.loads(out.decode("utf-8"), parse_int=_ijson_int)
    assert parsed == value
    assert canonical_json(parsed) == out
    assert _utf16_sorted(json.loads(out, object_pairs_hook=dict))


@PROPERTY
@given(
    st.dictionaries(st.text(max_size=6), st.integers(0, 9), max_size=8),
    st.randoms(use_true_random=False),
)
def test_member_order_of_the_input_does_not_matter(
    value: dict[str, int], rnd: random.Random
) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(value)


# Values as refgate writes them (no floats), with every kind of string a field
# name or value could hold: controls, quotes, backslashes, non-ASCII, astral.
_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
_PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=20,
)


@PROPERTY
@given(_PLAIN)
def test_the_fast_encoder_agrees_with_rfc8785(value: object) -> None:
    """The standard-library path (no floats, keys below U+E000) and the rfc8785
    package give the same bytes; values outside that path go to rfc8785 anyway."""
    import rfc8785

    assert canonical_json(value) == rfc8785.dumps(value)


def test_keys_whose_order_differs_in_utf16_take_the_rfc8785_path() -> None:
    value = {"\ufb33": 1, "\U0001f600": 2, "a": {"\ue000": True, "\U00010000": None}}
    text = canonical_json(value).decode("utf-8")
    assert text == '{"a":{"\U00010000":null,"\ue000":true},"\U0001f600":2,"\ufb33":1}'
