"""A corpus of hostile inputs: each gets a 4xx problem+json answer and stores nothing.

Malformed and deeply nested JSON (also inside a disclosure), huge bodies and
headers, invalid base64 and wrong key lengths, non-UTF-8, odd Unicode in field
ids and in a signed request, duplicate JSON keys, NUL bytes, huge integers, SQL
and path strings. (Field names travel only inside ciphertexts in Envelope v2: the
server never sees one, so odd names are the clients' to refuse; their odd
Unicode cases became cases on the opaque field ids the server does see.) Each case
is sent with a valid token of a role that may call the route, so it reaches the
parsing and checks behind authentication; the rows of every table that a
request could write are counted before and after the whole corpus.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.crypto import envelope as env
from app.crypto import keys
from app.crypto.encoding import b64url_encode
from tests.directory import service as directory_service
from tests.hardening import assert_problem, count_rows, quiet_settings
from tests.taskforce import TaskForce, rfc3339

STORED = (
    "referral",
    "referral_field",
    "referral_recipient",
    "referral_grant",
    "wrapped_key",
    "idempotency_record",
    "agency",
    "agency_key",
    "api_client",
    "webhook",
    "webhook_delivery",
    "directory_service",
)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return quiet_settings(database_url, tmp_path, max_body_bytes=256 * 1024)


@dataclass
class Case:
    name: str
    method: str
    path: str
    role: tuple[str, str] = ("shelter", "caseworker")
    json_body: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    statuses: tuple[int, ...] = ()  # empty: any 4xx


def _raw(body: str | bytes) -> bytes:
    return body if isinstance(body, bytes) else body.encode()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _with(body: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    out = copy.deepcopy(body)
    edit(out)
    return out


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = d
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return edit


def _rename_fid(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    """Call field ``old`` ``new`` wherever the body names it outside the signed disclosures."""

    def edit(d: dict[str, Any]) -> None:
        d["ciphertexts"][new] = d["ciphertexts"].pop(old)
        for w in d["wrapped_keys"]:
            if w["fid"] == old:
                w["fid"] = new

    return edit


def _swap_disclosure(
    tf: TaskForce, old: str, new: str
) -> Callable[[dict[str, Any]], None]:
    """Replace disclosure ``old`` by ``new`` and sign the manifest again (a valid signature)."""

    def edit(d: dict[str, Any]) -> None:
        d["disclosures"] = [new if x == old else x for x in d["disclosures"]]
        digests = set(d["manifest"]["digests"]) - {env.disclosure_digest(old)}
        d["manifest"]["digests"] = sorted(digests | {env.disclosure_digest(new)})
        d["signature"] = b64url_encode(
            keys.sign(tf["shelter"].keys.sig_seed, env.manifest_signing_input(d["manifest"]))
        )

    return edit


def _request_of(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    for item in body["disclosures"]:
        d = env.parse_disclosure(item)
        if d.kind == "request":
            return item, d.value.model_dump()
    raise AssertionError("no request disclosure")


def _status(tf: TaskForce, referral_id: str, **changes: Any) -> dict[str, Any]:
    legal = tf["legal"]
    body = env.sign_status(
        referral_id=referral_id, recipient=legal.agency_id, status="received", reason=None,
        note=None, signed_at=rfc3339(datetime.now(UTC)), sig_seed=legal.keys.sig_seed,
    )
    return {**body, **changes}


def corpus(tf: TaskForce, referral_id: str, webhook_id: str) -> list[Case]:
    sealed = tf.sealed(
        "shelter", {"full_name": "Hostile Test"}, {"full_name": {"legal": "service_provision"}}
    )
    fresh = sealed.body
    fid = sealed.fids["full_name"]
    rid = fresh["manifest"]["referral_id"]
    request, request_value = _request_of(fresh)
    homoglyph = env.make_disclosure(
        b"\x01" * 16, "request", {**request_value, "urgency": "urg\u0435nt"}
    )
    salt = b64url_encode(b"\x01" * 16).encode()
    deep = b64url_encode(
        b'["' + salt + b'","request",{"services":' + b"[" * 3000 + b"]" * 3000 + b"}]"
    )
    good_key = b64url_encode(keys.generate_signing_key().public)
    other_key = b64url_encode(keys.generate_signing_key().public)
    shelter = tf["shelter"].agency_id
    referrals = "/v1/referrals"
    item = f"/v1/referrals/{referral_id}"
    services = f"/v1/agencies/{shelter}/services"
    cases: list[Case] = [
        # malformed and deeply nested JSON
        Case("truncated json", "POST", referrals, content=b'{"manifest": {"v": 1', statuses=(400,)),
        Case("json array body", "POST", referrals, content=b"[]", statuses=(400,)),
        Case("json scalar body", "POST", referrals, content=b'"x"', statuses=(400,)),
        Case("empty body", "POST", referrals, content=b"", statuses=(400,)),
        Case("NaN", "POST", referrals, content=b'{"manifest": NaN}', statuses=(400,)),
        Case(
            "nested 40",
            "POST",
            referrals,
            content=_raw('{"a":' * 40 + "1" + "}" * 40),
            statuses=(400,),
        ),
        Case(
            "nested 50k arrays", "POST", referrals, content=_raw(_nested(50_000)), statuses=(400,)
        ),
        Case("nested status body", "POST", f"{item}/status", content=_raw(_nested(50_000))),
        Case("nested revocations", "POST", f"{item}/revocations", content=_raw(_nested(50_000))),
        Case(
            "nested agency body",
            "POST",
            "/v1/agencies",
            role=("office", "admin"),
            content=_raw('{"name":' * 5000 + "1" + "}" * 5000),
        ),
        Case(
            "nested grants body",
            "POST",
            f"{item}/grants",
            content=_raw(_nested(50_000)),
            statuses=(400,),
        ),
        # huge bodies and headers
        Case(
            "huge body",
            "POST",
            referrals,
            content=b"{" + b" " * (300 * 1024) + b"}",
            statuses=(413,),
        ),
        Case(
            "huge status body",
            "POST",
            f"{item}/status",
            json_body=_status(tf, referral_id, note="A" * (300 * 1024)),
            statuses=(413,),
        ),
        Case(
            "huge bearer",
            "GET",
            referrals,
            headers={"Authorization": "Bearer " + "a" * 65536},
            statuses=(401,),
        ),
        Case(
            "huge idempotency key",
            "POST",
            referrals,
            json_body=fresh,
            headers={"Idempotency-Key": "k" * 8192},
            statuses=(422,),
        ),
        Case(
            "huge header",
            "GET",
            f"{referrals}?box=received",
            headers={"X-Filler": "x" * 65536},
            statuses=(),
        ),  # filled in below: a 200 is fine here, it stores nothing
        # invalid base64 and wrong key lengths
        Case(
            "ciphertext not base64",
            "POST",
            referrals,
            json_body=_with(fresh, _set(f"ciphertexts.{fid}", "!!!not base64!!!")),
            statuses=(422,),
        ),
        Case(
            "ciphertext padded",
            "POST",
            referrals,
            json_body=_with(fresh, _set(f"ciphertexts.{fid}", fresh["ciphertexts"][fid] + "==")),
            statuses=(422,),
        ),
        Case(
            "signature not base64",
            "POST",
            referrals,
            json_body=_with(fresh, _set("signature", "%%%%")),
            statuses=(422,),
        ),
        Case(
            "signature short",
            "POST",
            referrals,
            json_body=_with(fresh, _set("signature", fresh["signature"][:40])),
            statuses=(422,),
        ),
        Case(
            "wrapped key short",
            "POST",
            referrals,
            json_body=_with(fresh, _set("wrapped_keys.0.wrapped_key", "AAAA")),
            statuses=(422,),
        ),
        Case(
            "wrapped key huge",
            "POST",
            referrals,
            json_body=_with(fresh, _set("wrapped_keys.0.wrapped_key", "A" * 4096)),
            statuses=(422,),
        ),
        Case(
            "agency key non-canonical base64",
            "POST",
            "/v1/agencies",
            role=("office", "admin"),
            json_body={
                "name": "x",
                "kind": "ngo",
                "enc_key": good_key[:42] + "B",
                "sign_key": b64url_encode(keys.generate_signing_key().public),
            },
            statuses=(422,),
        ),
        Case(
            "agency key not base64",
            "POST",
            "/v1/agencies",
            role=("office", "admin"),
            json_body={"name": "x", "kind": "ngo", "enc_key": "*" * 43, "sign_key": good_key},
            statuses=(422,),
        ),
        Case(
            "client key 33 bytes",
            "POST",
            f"/v1/agencies/{shelter}/clients",
            role=("office", "admin"),
            json_body={"role": "caseworker", "auth_key": b64url_encode(b"\x01" * 33)},
            statuses=(422,),
        ),
        Case(
            "rotate key 44 chars",
            "POST",
            f"/v1/agencies/{shelter}/keys",
            role=("office", "admin"),
            json_body={"enc_key": good_key + "A"},
            statuses=(422,),
        ),
        Case(
            "note not base64",
            "POST",
            f"{item}/status",
            role=("legal", "caseworker"),
            json_body=_status(tf, referral_id, note="not base64 at all" * 4),
            statuses=(422,),
        ),
        # non-UTF-8
        Case(
            "latin-1 body",
            "POST",
            referrals,
            content=json.dumps(fresh).encode().replace(rid.encode(), rid[:-1].encode() + b"\xe9"),
            statuses=(400,),
        ),
        Case(
            "invalid utf-8 body",
            "POST",
            referrals,
            content=b'{"manifest": "\xff\xfe"}',
            statuses=(400,),
        ),
        Case(
            "invalid utf-8 status",
            "POST",
            f"{item}/status",
            role=("legal", "caseworker"),
            content=b'{"status": "\xff"}',
        ),
        Case(
            "utf-16 body",
            "POST",
            referrals,
            content=json.dumps(fresh).encode("utf-16"),
            statuses=(400,),
        ),
        Case(
            "lone surrogate referral id",
            "POST",
            referrals,
            content=_raw(json.dumps(fresh).replace(f'"{rid}"', '"\\ud800"')),
        ),
        Case(
            "lone surrogate fid",
            "POST",
            referrals,
            content=_raw(json.dumps(fresh).replace(f'"{fid}"', '"\\udfff"')),
        ),
        Case(
            "lone surrogate agency name",
            "POST",
            "/v1/agencies",
            role=("office", "admin"),
            content=_raw(
                json.dumps(
                    {"name": "NAME", "kind": "ngo", "enc_key": other_key, "sign_key": good_key}
                ).replace('"NAME"', '"\\udfff"')
            ),
        ),
        # odd Unicode in field ids, the manifest and a signed request
        Case(
            "RTL override fid",
            "POST",
            referrals,
            json_body=_with(fresh, _rename_fid(fid, "full\u202ename")),
            statuses=(422,),
        ),
        Case(
            "zero-width fid",
            "POST",
            referrals,
            json_body=_with(fresh, _rename_fid(fid, "full\u200bname")),
            statuses=(422,),
        ),
        Case(
            "fullwidth fid",
            "POST",
            referrals,
            json_body=_with(fresh, _rename_fid(fid, "ｆｕｌｌ")),
            statuses=(422,),
        ),
        Case(
            "ligature fid",
            "POST",
            referrals,
            json_body=_with(fresh, _rename_fid(fid, "\ufb01eld")),
            statuses=(422,),
        ),
        Case(
            "NUL fid",
            "POST",
            referrals,
            json_body=_with(fresh, _rename_fid(fid, "full\x00name")),
            statuses=(400, 422),
        ),
        Case(
            "emoji manifest member (unsigned change)",
            "POST",
            referrals,
            json_body=_with(fresh, _set("manifest.\U0001f600", "x")),
            statuses=(422,),
        ),
        Case(
            "urgency homoglyph in a signed request",
            "POST",
            referrals,
            json_body=_with(fresh, _swap_disclosure(tf, request, homoglyph)),
            statuses=(422,),
        ),
        Case(
            "disclosure not base64url",
            "POST",
            referrals,
            json_body=_with(fresh, _set("disclosures.0", "not*base64")),
            statuses=(422,),
        ),
        Case(
            "disclosure nested 3000 deep",
            "POST",
            referrals,
            json_body=_with(fresh, _set("disclosures.0", deep)),
            statuses=(422,),
        ),
        Case(
            "NUL in agency name",
            "POST",
            "/v1/agencies",
            role=("office", "admin"),
            json_body={
                "name": "a\x00b",
                "kind": "ngo",
                "enc_key": b64url_encode(keys.generate_signing_key().public),
                "sign_key": good_key,
            },
        ),
        Case(
            "NUL in revocation fid",
            "POST",
            f"{item}/revocations",
            json_body={
                "revocations": [{"fid": fid[:-1] + "\x00", "recipient": tf["legal"].agency_id}]
            },
        ),
        Case(
            "NUL in webhook url",
            "POST",
            "/v1/webhooks",
            json_body={"url": "https://hooks.example.org/\x00", "event_types": ["grant.added"]},
        ),
        Case(
            "NUL in recipients",
            "POST",
            referrals,
            json_body=_with(fresh, _set("wrapped_keys.0.recipient", "legal\x00")),
            statuses=(400, 422),
        ),
        # duplicate JSON keys (signed bodies are parsed strictly)
        Case(
            "duplicate top-level key",
            "POST",
            referrals,
            content=_raw(json.dumps(fresh)[:-1] + ', "signature": "' + fresh["signature"] + '"}'),
            statuses=(400,),
        ),
        Case(
            "duplicate manifest key",
            "POST",
            referrals,
            content=_raw(json.dumps(fresh).replace('"v": 2', '"v": 2, "v": 2', 1)),
            statuses=(400,),
        ),
        Case(
            "duplicate grants key",
            "POST",
            f"{item}/grants",
            content=b'{"manifest": {}, "manifest": {}}',
            statuses=(400,),
        ),
        # huge integers
        Case(
            "seq beyond int64",
            "GET",
            "/v1/audit/events/18446744073709551616",
            role=("office", "auditor"),
        ),
        Case("negative seq", "GET", "/v1/audit/events/-1", role=("office", "auditor")),
        Case(
            "inclusion seq beyond int64",
            "GET",
            "/v1/audit/proof/inclusion?seq=99999999999999999999",
            role=("office", "auditor"),
        ),
        Case(
            "inclusion tree size beyond int64",
            "GET",
            "/v1/audit/proof/inclusion?seq=1&tree_size=99999999999999999999",
            role=("office", "auditor"),
        ),
        Case(
            "consistency beyond int64",
            "GET",
            "/v1/audit/proof/consistency?first=1&second=99999999999999999999",
            role=("office", "auditor"),
        ),
        Case(
            "audit cursor beyond int64",
            "GET",
            "/v1/audit/events?cursor=" + b64url_encode(b"99999999999999999999999"),
            role=("office", "auditor"),
        ),
        Case("limit overflow", "GET", f"{referrals}?limit=1e309"),
        # SQL and path strings
        Case("sql in referral id", "GET", f"{referrals}/1'%20OR%20'1'='1", statuses=(404,)),
        Case(
            "sql drop in referral id",
            "POST",
            f"{referrals}/x';DROP%20TABLE%20referral;--/withdraw",
            statuses=(404,),
        ),
        Case("dot-dot referral id", "GET", f"{referrals}/..%2F..%2Fetc%2Fpasswd", statuses=(404,)),
        Case("sql in cursor", "GET", f"{referrals}?cursor=' OR 1=1 --", statuses=(400,)),
        Case(
            "sql in webhook cursor",
            "GET",
            f"/v1/webhooks/{webhook_id}/deliveries?cursor=' OR 1=1 --",
            statuses=(400,),
        ),
        Case(
            "sql in referral_id member",
            "POST",
            referrals,
            json_body=_with(fresh, _set("manifest.referral_id", "1' OR '1'='1")),
            statuses=(422,),
        ),
        Case(
            "path in fid",
            "POST",
            referrals,
            json_body=_with(fresh, _rename_fid(fid, "../etc")),
            statuses=(422,),
        ),
        Case("sql in agency id", "GET", "/v1/agencies/' OR 1=1 --", statuses=(404,)),
        Case(
            "file url webhook",
            "POST",
            "/v1/webhooks",
            json_body={"url": "file:///etc/passwd", "event_types": ["grant.added"]},
            statuses=(422,),
        ),
        Case(
            "sql in revocation",
            "POST",
            f"{item}/revocations",
            json_body={"revocations": [{"fid": "x' OR '1'='1", "recipient": "' OR 1=1 --"}]},
            statuses=(422,),
        ),
        Case(
            "wrong content type",
            "POST",
            referrals,
            content=json.dumps(fresh).encode(),
            headers={"Content-Type": "text/plain"},
            statuses=(415,),
        ),
        # the service directory
        Case("nested service body", "POST", services, content=_raw(_nested(50_000))),
        Case(
            "nested service member",
            "POST",
            services,
            content=_raw('{"name":' * 5000 + "1" + "}" * 5000),
        ),
        Case(
            "service capacity beyond int64",
            "POST",
            services,
            json_body=directory_service(capacity={"available": 10**30, "unit": "beds"}),
            statuses=(422,),
        ),
        Case(
            "service with an address",
            "POST",
            services,
            json_body=directory_service(address="12 Harbor St"),
            statuses=(422,),
        ),
        Case(
            "NUL in a service name",
            "POST",
            services,
            json_body=directory_service(name="beds\x00"),
            statuses=(422,),
        ),
        Case(
            "homoglyph language tag",
            "POST",
            services,
            json_body=directory_service(languages=["\u0435s"]),
            statuses=(422,),
        ),
        Case(
            "sql in a service id",
            "PATCH",
            f"{services}/' OR 1=1 --/capacity",
            json_body={"available": 1},
            statuses=(404,),
        ),
        Case(
            "capacity overflow",
            "PATCH",
            f"{services}/{uuid.uuid4()}/capacity",
            content=b'{"available": 1e309}',
            statuses=(400, 422),
        ),
        Case("sql in directory cursor", "GET", "/v1/directory/services?cursor=' OR 1=1 --",
             statuses=(400,)),
        Case("sql in directory filter", "GET", "/v1/directory/services?language=' OR 1=1 --",
             statuses=(422,)),
    ]
    return cases


CORPUS_SIZE = 78
"""Number of hostile inputs in the corpus (checked by the test)."""

async def test_hostile_inputs_get_problem_json_and_store_nothing(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce, backend: str
) -> None:
    body = tf.seal(
        "shelter", {"full_name": "Target"}, {"full_name": {"legal": "service_provision"}}
    )
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    hook = await client.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.org/x", "event_types": ["grant.added"]},
        headers=await tf.headers("shelter"),
    )
    assert hook.status_code == 201, hook.text
    await tf.sequence()
    cases = corpus(tf, body["manifest"]["referral_id"], hook.json()["id"])
    assert len(cases) == CORPUS_SIZE
    failures: list[str] = []
    for case in cases:
        failures += await _send(app, client, tf, case)
    assert not failures, "\n".join(failures)


async def _send(app: FastAPI, client: httpx.AsyncClient, tf: TaskForce, case: Case) -> list[str]:
    """What went wrong with one case: a non-4xx or non-problem answer, or stored rows."""
    problems = []
    before = await count_rows(app.state.engine, *STORED)
    headers = {**await tf.headers(*case.role), **case.headers}
    if case.content is not None:
        headers.setdefault("Content-Type", "application/json")
    r: httpx.Response | None = None
    try:
        r = await client.request(
            case.method,
            case.path,
            json=case.json_body if case.content is None else None,
            content=case.content,
            headers=headers,
        )
    except Exception as exc:  # an unhandled server error surfaces here in-process
        problems.append(f"{case.name}: server raised {type(exc).__name__}: {str(exc)[:300]}")
    after = await count_rows(app.state.engine, *STORED)
    if after != before:
        grew = {t: after[t] - before[t] for t in STORED if after[t] != before[t]}
        problems.append(f"{case.name}: stored rows {grew}")
    if r is not None and not (case.name == "huge header" and r.status_code == 200):
        try:
            assert_problem(r, *case.statuses)
        except AssertionError as exc:
            problems.append(f"{case.name}: {exc}")
    return problems


async def test_an_unknown_referral_id_of_any_shape_is_404(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    headers = await tf.headers("shelter")
    for rid in (str(uuid.uuid4()), "x" * 300, "ß", "null", "0", "%2e%2e"):
        r = await client.get(f"/v1/referrals/{rid}", headers=headers)
        assert_problem(r, 404)


async def test_a_nul_byte_in_a_path_id_is_a_4xx(client: httpx.AsyncClient, tf: TaskForce) -> None:
    r = await client.get("/v1/referrals/%00", headers=await tf.headers("shelter"))
    assert_problem(r, 400)
