"""The acceptance scenarios of Envelope v2, end to end through HTTP, on both databases."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from app.crypto import envelope as env
from app.crypto import keys
from app.crypto.encoding import b64url_encode
from app.models.tables import WrappedKey
from tests.rawdb import raw_database
from tests.taskforce import TaskForce, rfc3339

MARIA = {
    "full_name": "Maria Example",
    "narrative": "She was recruited with a false job offer.",
    "immigration_status": "Overstayed a tourist visa in 2024",
}
CONSENT = {
    "full_name": {"legal": "service_provision", "police": "investigation"},
    "narrative": {"legal": "service_provision"},
    "immigration_status": {"legal": "service_provision"},
}
REQUESTS = {
    "legal": {"services": ["legal", "immigration_legal"], "urgency": "urgent",
              "case_ref": "HH-2026-0117"},
    "police": {"services": ["investigation"], "urgency": "routine", "case_ref": None},
}


def _open(tf: TaskForce, name: str, sender: str, body: dict[str, Any]) -> env.Opened:
    m = tf[name]
    return env.open_envelope(
        body,
        agency_id=m.agency_id,
        enc_private=m.keys.enc_private,
        sender_sig_public=tf[sender].keys.sig_public,
    )


async def _send(client: httpx.AsyncClient, tf: TaskForce, body: dict[str, Any]) -> str:
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    return str(body["manifest"]["referral_id"])


async def test_a_liaison_sees_only_its_own_part_and_nothing_of_the_rest(
    client: httpx.AsyncClient, tf: TaskForce, settings: Any
) -> None:
    sealed = tf.sealed("shelter", MARIA, CONSENT, requests=REQUESTS)
    rid = await _send(client, tf, sealed.body)

    r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("police", "liaison"))
    assert r.status_code == 200, r.text
    police = r.json()
    kinds = [json.loads(base64.urlsafe_b64decode(d + "==="))[1] for d in police["disclosures"]]
    assert sorted(kinds) == ["field", "grant", "request"]
    assert list(police["ciphertexts"]) == [sealed.fids["full_name"]]
    assert [w["fid"] for w in police["wrapped_keys"]] == [sealed.fids["full_name"]]
    assert [s["recipient"] for s in police["statuses"]] == [tf["police"].agency_id]
    opened = _open(tf, "police", "shelter", police)
    assert opened.fields == {"full_name": "Maria Example"}
    assert list(opened.requests) == [tf["police"].agency_id]

    raw = r.content
    for name in MARIA:
        assert name.encode() not in raw
    assert tf["legal"].agency_id.encode() not in raw
    assert b"HH-2026-0117" not in raw
    assert b"immigration_legal" not in raw
    served = set(police["disclosures"])
    for other in set(sealed.body["disclosures"]) - served:
        assert other.encode() not in raw
    for fid in (sealed.fids["narrative"], sealed.fids["immigration_status"]):
        assert fid.encode() not in raw

    legal = (await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("legal"))).json()
    assert _open(tf, "legal", "shelter", legal).fields == MARIA

    inbox = (await client.get("/v1/referrals", headers=await tf.headers("police", "liaison")))
    item = inbox.json()["items"][0]
    assert item["request"] == {"recipient": tf["police"].agency_id,
                               "services": ["investigation"], "urgency": "routine",
                               "case_ref": None}
    assert tf["legal"].agency_id.encode() not in inbox.content

    dump = await raw_database(settings)
    for name, value in MARIA.items():
        assert name.encode() not in dump
        assert value.encode() not in dump


async def test_times_are_returned_exactly_as_signed(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    body = tf.seal("shelter", {"full_name": "A"}, {"full_name": {"legal": "service_provision"}},
                   created_at=_now())
    rid = await _send(client, tf, body)
    sent = (await client.get("/v1/referrals?box=sent", headers=await tf.headers("shelter")))
    assert sent.json()["items"][0]["created_at"] == body["manifest"]["created_at"]
    read = (await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("shelter"))).json()
    assert read["manifest"] == body["manifest"]


def _resign(tf: TaskForce, body: dict[str, Any], extra: list[str] | None = None,
            digests: list[str] | None = None) -> dict[str, Any]:
    manifest = dict(body["manifest"])
    if digests is not None:
        manifest["digests"] = digests
    out = {**body, "manifest": manifest,
           "disclosures": body["disclosures"] + (extra or [])}
    out["signature"] = b64url_encode(
        keys.sign(tf["shelter"].keys.sig_seed, env.manifest_signing_input(manifest))
    )
    return out


async def _refused(client: httpx.AsyncClient, tf: TaskForce, body: Any, rule: str) -> str:
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["type"].endswith(rule), problem
    return str(problem["detail"])


async def test_every_broken_rule_is_a_422_naming_it_and_stores_nothing(
    client: httpx.AsyncClient, tf: TaskForce, app: Any
) -> None:
    good = tf.seal("shelter", MARIA, CONSENT, requests=REQUESTS)
    # a recipient with a request and no grant at all (the SDK refuses to build it)
    only_legal = tf.seal("shelter", {"full_name": "A"},
                         {"full_name": {"legal": "service_provision"}})
    ask_police = env.make_disclosure(b"\x02" * 16, "request", {
        "recipient": tf["police"].agency_id, "services": ["investigation"],
        "urgency": "routine", "case_ref": None,
    })
    digests = only_legal["manifest"]["digests"] + [env.disclosure_digest(ask_police)]
    digests += [b64url_encode(bytes([i]) * 32) for i in range(7)]
    await _refused(client, tf, _resign(tf, only_legal, [ask_police], sorted(digests)),
                   "envelope/missing-grant")
    # consent beyond the maximum: refused, naming it, never shortened
    detail = await _refused(
        client, tf,
        tf.seal("shelter", {"full_name": "A"}, {"full_name": {"legal": "service_provision"}},
                days=400),
        "envelope/consent-too-long",
    )
    assert "180 days" in detail
    # unknown members anywhere
    await _refused(client, tf, {**good, "metadata": {"survivor_name": "Jane"}},
                   "envelope/malformed")
    await _refused(client, tf, {**good, "manifest": {**good["manifest"], "case_ref": "x"}},
                   "envelope/malformed")
    # a disclosure whose digest is not in the manifest
    stray = env.make_disclosure(b"\x01" * 16, "request", {
        "recipient": tf["ngo"].agency_id, "services": ["legal"], "urgency": "routine",
        "case_ref": None,
    })
    await _refused(client, tf, _resign(tf, good, [stray]), "envelope/undisclosed-digest")
    # a created_at far from the clock
    from datetime import UTC, datetime, timedelta

    old = tf.seal("shelter", {"full_name": "A"}, {"full_name": {"legal": "service_provision"}},
                  created_at=datetime.now(UTC) - timedelta(hours=1))
    await _refused(client, tf, old, "envelope/clock-skew")
    # a recipient that is not active
    async with app.state.sessionmaker() as db, db.begin():
        await db.execute(text("UPDATE agency SET status = 'suspended' WHERE id = :id"),
                         {"id": tf["ngo"].agency_id})
    await _refused(client, tf, tf.seal("shelter", {"full_name": "A"},
                                       {"full_name": {"ngo": "service_provision"}}),
                   "envelope/inactive-recipient")
    async with app.state.sessionmaker() as db:
        assert await db.scalar(text("SELECT count(*) FROM referral")) == 0
        assert await db.scalar(select(func.count()).select_from(WrappedKey)) == 0


async def test_a_rewritten_status_is_refused_by_the_sender(
    client: httpx.AsyncClient, tf: TaskForce, app: Any
) -> None:
    rid = await _send(client, tf, tf.seal("shelter", MARIA, CONSENT, requests=REQUESTS))
    legal = tf["legal"]
    note = env.seal_note("Intake Monday 10:00", tf["shelter"].keys.enc_public)
    body = env.sign_status(referral_id=rid, recipient=legal.agency_id, status="accepted",
                           reason=None, note=note, signed_at=rfc3339(_now()),
                           sig_seed=legal.keys.sig_seed)
    r = await client.post(f"/v1/referrals/{rid}/status", json=body,
                          headers=await tf.headers("legal"))
    assert r.status_code == 200, r.text
    # a status signed by another agency's key is refused by the server
    forged = env.sign_status(referral_id=rid, recipient=tf["police"].agency_id,
                             status="accepted", reason=None, note=None,
                             signed_at=rfc3339(_now()), sig_seed=legal.keys.sig_seed)
    r = await client.post(f"/v1/referrals/{rid}/status", json=forged,
                          headers=await tf.headers("police", "liaison"))
    assert r.status_code == 422
    assert r.json()["type"].endswith("status/bad-signature")

    def statuses_of(doc: dict[str, Any]) -> dict[str, Any]:
        return {s["recipient"]: s for s in doc["statuses"]}

    doc = (await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("shelter"))).json()
    env.verify_status(statuses_of(doc)[legal.agency_id], referral_id=rid,
                      sig_public=legal.keys.sig_public)
    other_note = env.seal_note("Do not come", tf["shelter"].keys.enc_public)
    for column, value in (("status", "'rejected'"), ("note", f"'{other_note}'"),
                          ("reason", "'no_capacity'")):
        async with app.state.sessionmaker() as db, db.begin():
            await db.execute(text(
                f"UPDATE referral_recipient SET {column} = {value} "  # noqa: S608 (test constants)
                "WHERE referral_id = :rid AND recipient = :r"
            ), {"rid": rid, "r": legal.agency_id})
        doc = (await client.get(f"/v1/referrals/{rid}",
                                headers=await tf.headers("shelter"))).json()
        with pytest.raises(env.EnvelopeError, match="does not verify"):
            env.verify_status(statuses_of(doc)[legal.agency_id], referral_id=rid,
                              sig_public=legal.keys.sig_public)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _amendment(tf: TaskForce, doc: dict[str, Any], field: str, to: str) -> dict[str, Any]:
    from datetime import timedelta

    return env.amend(
        doc, sender_agency=tf["shelter"].agency_id, sender_sig_seed=tf["shelter"].keys.sig_seed,
        sender_enc_private=tf["shelter"].keys.enc_private,
        grants=[env.Grant(field, tf[to].agency_id, tf[to].keys.enc_public, "service_provision",
                          rfc3339(_now() + timedelta(days=30)))],
        requests=[] if to in ("legal", "police") else [
            env.Request(tf[to].agency_id, ("case_management",), "routine")
        ],
    )


async def test_an_amendment_adds_consent_and_a_stale_one_is_a_409(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    rid = await _send(client, tf, tf.seal("shelter", MARIA, CONSENT, requests=REQUESTS))
    shelter = await tf.headers("shelter")
    doc = (await client.get(f"/v1/referrals/{rid}", headers=shelter)).json()
    first = _amendment(tf, doc, "narrative", "police")
    second = _amendment(tf, doc, "full_name", "ngo")
    r = await client.post(f"/v1/referrals/{rid}/grants", json=first, headers=shelter)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    r = await client.post(f"/v1/referrals/{rid}/grants", json=second, headers=shelter)
    assert r.status_code == 409
    assert r.json()["type"].endswith("version-conflict")
    police = (await client.get(f"/v1/referrals/{rid}",
                               headers=await tf.headers("police", "liaison"))).json()
    assert _open(tf, "police", "shelter", police).fields == {
        "full_name": MARIA["full_name"], "narrative": MARIA["narrative"]}
    r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("ngo"))
    assert r.status_code == 404


@pytest.mark.parametrize("backend", ["postgresql"])  # row locks race only on PostgreSQL
async def test_two_concurrent_amendments_one_wins_and_nothing_is_lost(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    rid = await _send(client, tf, tf.seal("shelter", MARIA, CONSENT, requests=REQUESTS))
    shelter = await tf.headers("shelter")
    doc = (await client.get(f"/v1/referrals/{rid}", headers=shelter)).json()
    bodies = [_amendment(tf, doc, "narrative", "police"), _amendment(tf, doc, "full_name", "ngo")]
    answers = await asyncio.gather(*(
        client.post(f"/v1/referrals/{rid}/grants", json=b, headers=shelter) for b in bodies
    ))
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    doc = (await client.get(f"/v1/referrals/{rid}", headers=shelter)).json()
    assert doc["manifest"]["version"] == 2
    assert _open(tf, "shelter", "shelter", doc).fields == MARIA
    for name, role in (("legal", "caseworker"), ("police", "liaison")):
        r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers(name, role))
        assert r.status_code == 200
        assert _open(tf, name, "shelter", r.json()).fields


async def test_withdraw_shreds_every_recipient_key_and_answers_404(
    client: httpx.AsyncClient, tf: TaskForce, app: Any
) -> None:
    rid = await _send(client, tf, tf.seal("shelter", MARIA, CONSENT, requests=REQUESTS))
    r = await client.post(f"/v1/referrals/{rid}/withdraw", headers=await tf.headers("shelter"))
    assert r.status_code == 200
    assert {s["status"] for s in r.json()} == {"cancelled"}
    for name, role in (("legal", "caseworker"), ("police", "liaison")):
        got = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers(name, role))
        assert got.status_code == 404
    async with app.state.sessionmaker() as db:
        left = (await db.execute(
            select(WrappedKey.recipient).where(WrappedKey.referral_id == rid)
        )).scalars().all()
    assert set(left) == {tf["shelter"].agency_id}
    doc = (await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("shelter"))).json()
    assert _open(tf, "shelter", "shelter", doc).fields == MARIA


async def test_revoked_consent_stops_delivery_of_that_field_at_once(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    sealed = tf.sealed("shelter", MARIA, CONSENT, requests=REQUESTS)
    rid = await _send(client, tf, sealed.body)
    r = await client.post(
        f"/v1/referrals/{rid}/revocations",
        json={"revocations": [{"fid": sealed.fids["narrative"],
                               "recipient": tf["legal"].agency_id}]},
        headers=await tf.headers("shelter"),
    )
    assert r.status_code == 200, r.text
    legal = (await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("legal"))).json()
    assert set(_open(tf, "legal", "shelter", legal).fields) == {"full_name", "immigration_status"}
    assert sealed.fids["narrative"] not in json.dumps(legal)


async def test_limits_are_discoverable(client: httpx.AsyncClient, tf: TaskForce) -> None:
    r = await client.get("/v1/limits", headers=await tf.headers("police", "liaison"))
    assert r.status_code == 200
    limits = r.json()
    assert limits["max_consent_days"] == 180
    assert "immigration_legal" in limits["services"]


async def test_a_referral_id_is_used_once(client: httpx.AsyncClient, tf: TaskForce) -> None:
    rid = str(uuid.uuid4())
    await _send(client, tf, tf.seal("shelter", {"full_name": "A"},
                                    {"full_name": {"legal": "service_provision"}},
                                    referral_id=rid))
    again = tf.seal("shelter", {"full_name": "B"}, {"full_name": {"legal": "service_provision"}},
                    referral_id=rid)
    r = await client.post("/v1/referrals", json=again, headers=await tf.headers("shelter"))
    assert r.status_code == 409
