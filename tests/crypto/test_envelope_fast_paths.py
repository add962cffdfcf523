"""The envelope checks' cheaper paths (issue 20) held to the ones they replace:
``parse_disclosures`` (one pydantic call per disclosure type) to ``parse_disclosure``
of each in order, the same models or the same first error; the shared strict JSON
decoder to ``json.loads`` with the same hooks; a validated manifest's bytes to
``canonical_json`` of its ``model_dump()``."""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.crypto.canonical import canonical_json
from app.crypto.encoding import b64url_encode
from app.crypto.envelope import EnvelopeError, parse_disclosure, parse_disclosures
from app.crypto.envelope.common import _loads_strict, _no_duplicates, _refuse_constant
from app.crypto.envelope.manifest import _manifest_bytes
from app.crypto.wire import Manifest


def b64(n: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=n, max_size=n).map(b64url_encode)


UUIDS = st.uuids().map(str)
TIMES = st.sampled_from(
    ["2030-01-01T00:00:00Z", "2026-02-03T04:05:06.5Z", "2026-02-03T04:05:06Z",
     "2026-13-01T00:00:00Z"]
)


def _field() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"fid": b64(16), "ciphertext_sha256": b64(32), "commitment": b64(32)}
    )


def _grant() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "fid": b64(16),
            "recipient": UUIDS,
            "kid": b64(16),
            "wrapped_key_sha256": b64(32),
            "purpose": st.sampled_from(["sender", "service_provision", "investigation", "x"]),
            "expires_at": st.one_of(st.none(), TIMES),
            "release_ref": st.one_of(st.none(), st.sampled_from(["ref-1", "", "a b"])),
        }
    )


def _request() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "recipient": UUIDS,
            "services": st.lists(st.sampled_from(["shelter", "legal", "nope"]), max_size=3),
            "urgency": st.sampled_from(["routine", "urgent", "soon"]),
            "case_ref": st.one_of(st.none(), st.sampled_from(["c-1", "bad ref"])),
        }
    )


@st.composite
def disclosure(draw: st.DrawFn) -> object:
    """A disclosure, valid or broken in one of the ways a client could break it."""
    kind = draw(st.sampled_from(["field", "grant", "request"]))
    value: Any = draw({"field": _field(), "grant": _grant(), "request": _request()}[kind])
    salt: Any = draw(b64(16))
    breakage = draw(
        st.sampled_from(["none"] * 6 + ["member", "extra", "type", "salt", "kind", "shape"])
    )
    if breakage == "member":
        value.pop(draw(st.sampled_from(sorted(value))))
    elif breakage == "extra":
        value["extra"] = 1
    elif breakage == "type":
        value[draw(st.sampled_from(sorted(value)))] = draw(st.sampled_from([1, None, [], 1.5]))
    elif breakage == "salt":
        salt = draw(st.sampled_from([None, "AAAA", b64url_encode(b"x" * 15)]))
    elif breakage == "kind":
        kind = draw(st.sampled_from(["Field", "", "other"]))
    array: Any = [salt, kind, value]
    if breakage == "shape":
        array = draw(st.sampled_from([array[:2], [*array, 1], {"salt": salt}]))
    text = json.dumps(array, separators=(",", ":"))
    mangle = draw(st.sampled_from(["none"] * 8 + ["dup", "nan", "space", "notb64", "notstr"]))
    if mangle == "dup":
        text = text.replace("{", '{"fid":"x",', 1)
    elif mangle == "nan":
        text = text[:-1] + ",NaN]"
    elif mangle == "space":
        text = " " + text + "\n"
    elif mangle == "notb64":
        return b64url_encode(text.encode()) + "="
    elif mangle == "notstr":
        return 7
    return b64url_encode(text.encode())


def outcome(parse: Any, items: list[object]) -> tuple[str, Any]:
    try:
        return "ok", parse(items)
    except EnvelopeError as exc:
        return "refused", (exc.code, exc.message)


@settings(max_examples=1500, deadline=None)
@given(st.lists(disclosure(), max_size=8))
def test_parse_disclosures_is_parse_disclosure_of_each(items: list[object]) -> None:
    expected = outcome(lambda xs: [parse_disclosure(x) for x in xs], items)
    assert outcome(parse_disclosures, items) == expected


TEXTS = st.one_of(
    st.text(alphabet='[]{}",:0123456789.eE+- \n\tNaIfinytrulsx\ufeff\\u', max_size=30),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4)),
        lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=2), c)),
        max_leaves=8,
    ).map(json.dumps),
)


def _outcome_loads(loads: Any, text: str) -> tuple[str, Any]:
    try:
        return "ok", loads(text)
    except (ValueError, RecursionError) as exc:
        return "refused", (type(exc).__name__, str(exc))


@settings(max_examples=3000, deadline=None)
@given(TEXTS, st.sampled_from(["", " ", "\ufeff", "x"]), st.sampled_from(["", " ", "]", "1"]))
def test_strict_loads_is_json_loads_with_the_hooks(text: str, before: str, after: str) -> None:
    text = before + text + after

    def reference(t: str) -> Any:
        return json.loads(t, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)

    assert _outcome_loads(_loads_strict, text) == _outcome_loads(reference, text)


@settings(max_examples=300, deadline=None)
@given(
    st.uuids().map(str),
    st.uuids().map(str),
    b64(16),
    st.sampled_from(["2026-01-02T03:04:05Z", "2026-01-02T03:04:05.123456789Z"]),
    st.integers(1, 1_000_000),
    st.lists(b64(32), min_size=8, max_size=24),
)
def test_manifest_bytes_are_its_canonical_json(
    referral_id: str, sender: str, kid: str, created_at: str, version: int, digests: list[str]
) -> None:
    manifest = Manifest.model_validate(
        {"v": 2, "referral_id": referral_id, "sender_agency": sender, "sender_kid": kid,
         "created_at": created_at, "version": version, "digests": sorted(digests)},
        strict=True,
    )
    assert _manifest_bytes(manifest) == canonical_json(manifest.model_dump())


def test_the_generators_reach_both_outcomes() -> None:
    """A sanity check of the strategy: valid lists parse, a broken one is refused."""
    valid = b64url_encode(
        json.dumps([b64url_encode(b"s" * 16), "request",
                    {"recipient": str(uuid.uuid4()), "services": ["shelter"],
                     "urgency": "routine", "case_ref": None}]).encode()
    )
    assert outcome(parse_disclosures, [valid, valid])[0] == "ok"
    broken = outcome(parse_disclosures, [valid, valid[:-2]])
    assert broken == outcome(lambda xs: [parse_disclosure(x) for x in xs], [valid, valid[:-2]])
    assert broken[0] == "refused"
