"""The audit API: what is recorded, who reads it, and proofs that check out offline."""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.client.assertion import client_assertion, token_form
from app.crypto import checkpoint, keys, merkle
from app.crypto import envelope as env
from app.crypto.canonical import canonical_json
from app.services import audit, audit_log
from app.services.audit import Action, Actor
from tests.taskforce import TaskForce, rfc3339

TOKEN_URL = "http://test/oauth/token"


def _client_id(tf: TaskForce, name: str, role: str = "caseworker") -> str:
    return tf[name].clients[role][0]


async def _events(client: httpx.AsyncClient, headers: dict[str, str], **params: Any
                  ) -> list[dict[str, Any]]:
    """Every event matching the filter, newest first, following the cursor."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/audit/events", params=query, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def _send_sealed(client: httpx.AsyncClient, tf: TaskForce) -> env.Sealed:
    sealed = tf.sealed(
        "shelter",
        {"full_name": "Ana Example", "narrative": "Recruited with a false job offer."},
        {"full_name": {"legal": "service_provision", "police": "investigation"},
         "narrative": {"legal": "service_provision"}},
    )
    r = await client.post("/v1/referrals", json=sealed.body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    return sealed


async def _send(client: httpx.AsyncClient, tf: TaskForce) -> dict[str, Any]:
    return (await _send_sealed(client, tf)).body


FIELD_NAMES = ("full_name", "narrative")


async def _db_rows(app: Any, sql: str) -> list[tuple[Any, ...]]:
    async with app.state.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql))).all()]


async def _log_order(app: Any) -> list[str]:
    rows = await _db_rows(
        app,
        "SELECT e.event_id FROM audit_event e LEFT JOIN audit_leaf l ON l.event_id = e.id "
        "ORDER BY CASE WHEN l.seq IS NULL THEN 1 ELSE 0 END, l.seq, e.id",
    )
    return [r[0] for r in rows]


async def test_token_issuance_is_recorded_granted_and_refused(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    legal = _client_id(tf, "legal")
    await tf.token("legal", "caseworker")
    wrong_key = keys.generate_signing_key()
    form = token_form(client_assertion(legal, wrong_key.seed, TOKEN_URL))
    r = await client.post("/oauth/token", data=form)
    assert r.status_code == 401, r.text
    # A replayed assertion is refused too, and so is one that is not a JWT at all.
    good = client_assertion(legal, tf["legal"].clients["caseworker"][1].seed, TOKEN_URL)
    form["client_assertion"] = good
    assert (await client.post("/oauth/token", data=form)).status_code == 200
    assert (await client.post("/oauth/token", data=form)).status_code == 401
    form["client_assertion"] = "not-a-jwt"
    assert (await client.post("/oauth/token", data=form)).status_code == 401

    auditor = await tf.headers("office", "auditor")
    mine = await _events(client, auditor, actor=legal, action="token:issue")
    outcomes = sorted((e["event"]["outcome"], e["event"]["detail"].get("reason")) for e in mine)
    assert outcomes == [
        ("denied", "bad_signature"), ("denied", "replay"), ("ok", None), ("ok", None)
    ]
    for item in mine:
        event = item["event"]
        assert event["resource_type"] == "client"
        assert event["resource_id"] == legal
        assert event["actor_agency"] == tf["legal"].agency_id
        assert event["role"] == "caseworker"
        assert event["request_id"]
    malformed = await _events(client, auditor, action="token:issue", outcome="denied")
    assert any(e["event"]["detail"] == {"reason": "malformed"} and e["event"]["actor"] is None
               for e in malformed)


async def test_referral_create_read_and_denied_read_are_recorded(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    sealed = await _send_sealed(client, tf)
    rid = sealed.body["manifest"]["referral_id"]
    r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("legal"))
    assert r.status_code == 200
    r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("ngo"))
    assert r.status_code == 404

    events = await _events(client, await tf.headers("office", "auditor"), resource_id=rid)
    got = sorted((e["event"]["action"], e["event"]["outcome"], e["event"]["actor"]) for e in events)
    assert got == sorted([
        ("referral:create", "ok", _client_id(tf, "shelter")),
        ("referral:read", "ok", _client_id(tf, "legal")),
        ("referral:read", "denied", _client_id(tf, "ngo")),
    ])
    by_action = {(e["event"]["action"], e["event"]["outcome"]): e["event"] for e in events}
    create = by_action[("referral:create", "ok")]
    fids = {sealed.fids["full_name"], sealed.fids["narrative"]}
    assert create["subject_agency"] == tf["shelter"].agency_id
    assert set(create["detail"]["fids"]) == fids
    assert create["detail"]["recipients"] == sorted(
        [tf["legal"].agency_id, tf["police"].agency_id]
    )
    read = by_action[("referral:read", "ok")]
    assert read["actor_agency"] == tf["legal"].agency_id
    assert read["purpose"] == "service_provision"
    assert set(read["grant"]) == fids  # the consent that allowed the read, by field id
    assert set(read["detail"]["fids"]) == fids
    denied = by_action[("referral:read", "denied")]
    assert denied["actor_agency"] == tf["ngo"].agency_id
    assert denied["grant"] is None
    for e in events:  # field ids only: a field's name never reaches the log
        assert not any(name in json.dumps(e["event"]) for name in FIELD_NAMES)


async def test_filters_select_matching_events(client: httpx.AsyncClient, tf: TaskForce) -> None:
    body = await _send(client, tf)
    rid = body["manifest"]["referral_id"]
    await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("legal"))
    await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("ngo"))
    h = await tf.headers("office", "auditor")
    everything = await _events(client, h)
    assert len(everything) > 20

    def expect(pred: Any) -> list[str]:
        return [e["event"]["event_id"] for e in everything if pred(e["event"])]

    legal = _client_id(tf, "legal")
    shelter_agency = tf["shelter"].agency_id
    cases: list[tuple[dict[str, str], Any]] = [
        ({"actor": legal}, lambda e: e["actor"] == legal),
        ({"agency": shelter_agency},
         lambda e: shelter_agency in (e["actor_agency"], e["subject_agency"])),
        ({"resource_id": rid}, lambda e: e["resource_id"] == rid),
        ({"action": "key:register"}, lambda e: e["action"] == "key:register"),
        ({"outcome": "denied"}, lambda e: e["outcome"] == "denied"),
        ({"action": "referral:read", "outcome": "ok"},
         lambda e: e["action"] == "referral:read" and e["outcome"] == "ok"),
    ]
    middle = sorted(e["event"]["ts"] for e in everything)[len(everything) // 2]
    cases += [
        ({"since": middle}, lambda e: e["ts"] >= middle),
        ({"until": middle}, lambda e: e["ts"] < middle),
    ]
    for params, pred in cases:
        # Drop events recorded by the queries themselves (they are newer than the snapshot).
        got = [e["event"]["event_id"] for e in await _events(client, h, **params)
               if e["event"]["action"] != "audit:query"]
        want = [i for i in expect(pred)
                if next(e for e in everything if e["event"]["event_id"] == i)["event"]["action"]
                != "audit:query"]
        assert got == want, params
        assert got, params
    r = await client.get("/v1/audit/events", params={"action": "no:such"}, headers=h)
    assert r.status_code == 422


async def test_cursor_pagination_walks_every_event_once_newest_first(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    await _send(client, tf)
    h = await tf.headers("office", "auditor")
    newest_first = [r[0] for r in await _db_rows(
        tf.app, "SELECT event_id FROM audit_event ORDER BY ts_leaf DESC, id DESC")]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/audit/events", params=params, headers=h)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 7
        seen += [i["event"]["event_id"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages > 2
    assert seen == newest_first  # the queries' own events are newer than the first page
    r = await client.get("/v1/audit/events", params={"cursor": "%%%"}, headers=h)
    assert r.status_code == 400


@pytest.mark.parametrize("chunk", [7, audit_log.EXPORT_CHUNK])
async def test_export_streams_every_event_once_in_log_order(
    client: httpx.AsyncClient, tf: TaskForce, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(audit_log, "EXPORT_CHUNK", chunk)
    await _send(client, tf)
    await tf.sequence()
    await _send(client, tf)  # these stay pending: seq null, after the sequenced ones
    h = await tf.headers("office", "auditor")

    r = await client.get("/v1/audit/export", params={"format": "ndjson"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert "content-length" not in r.headers  # streamed, not buffered by the server
    items = [json.loads(line) for line in r.text.splitlines()]
    assert [i["event"]["event_id"] for i in items] == await _log_order(tf.app)
    seqs = [i["seq"] for i in items if i["seq"] is not None]
    assert seqs == list(range(len(seqs)))
    assert all(i["seq"] is None for i in items[len(seqs):])
    assert len(items) > len(seqs)
    for i in items[: len(seqs)]:
        assert base64.b64decode(i["leaf_hash"]) == merkle.leaf_hash(canonical_json(i["event"]))

    r = await client.get("/v1/audit/export", params={"format": "csv"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert tuple(rows[0]) == audit_log.CSV_COLUMNS
    assert [row["event_id"] for row in rows] == await _log_order(tf.app)
    assert [int(row["seq"]) for row in rows if row["seq"]] == seqs
    by_id = {i["event"]["event_id"]: i["event"] for i in items}
    for row in rows:
        event = by_id.get(row["event_id"])
        if event is not None:
            assert row["action"] == event["action"]
            assert json.loads(row["detail"]) == event["detail"]
    assert (await client.get("/v1/audit/export", params={"format": "xml"}, headers=h)
            ).status_code == 422


async def test_event_by_seq_and_proofs_verify_against_the_signed_checkpoint(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    await _send(client, tf)
    await tf.sequence()
    h = await tf.headers("office", "auditor")
    vkey = (await client.get("/v1/audit/log-key", headers=h)).text.strip()
    assert vkey.startswith(tf.app.state.settings.audit.log_origin + "+")
    first = checkpoint.open_checkpoint((await client.get("/v1/audit/checkpoint", headers=h)).text,
                                       vkey)
    await _send(client, tf)
    await tf.sequence()
    r = await client.get("/v1/audit/checkpoint", headers=h)
    assert r.headers["content-type"].startswith("text/plain")
    cp = checkpoint.open_checkpoint(r.text, vkey)
    assert cp.size > first.size > 0

    # A spread of positions (each costs three requests; the API's burst limit is per client).
    for seq in sorted({0, 1, first.size - 1, first.size, cp.size - 1, *range(2, cp.size, 5)}):
        r = await client.get(f"/v1/audit/events/{seq}", headers=h)
        assert r.status_code == 200, r.text
        item = r.json()
        assert set(item) == {"seq", "event", "leaf_hash"}
        assert item["seq"] == seq
        leaf = merkle.leaf_hash(canonical_json(item["event"]))
        assert base64.b64decode(item["leaf_hash"]) == leaf
        r = await client.get("/v1/audit/proof/inclusion", params={"seq": seq}, headers=h)
        proof = r.json()
        assert (proof["index"], proof["tree_size"]) == (seq, cp.size)
        hashes = [base64.b64decode(x) for x in proof["hashes"]]
        assert merkle.verify_inclusion(leaf, seq, cp.size, hashes, cp.root)
        if seq < first.size:
            r = await client.get("/v1/audit/proof/inclusion",
                                 params={"seq": seq, "tree_size": first.size}, headers=h)
            hashes = [base64.b64decode(x) for x in r.json()["hashes"]]
            assert merkle.verify_inclusion(leaf, seq, first.size, hashes, first.root)
            assert not merkle.verify_inclusion(leaf, seq, first.size, hashes, cp.root)

    r = await client.get("/v1/audit/proof/consistency",
                         params={"first": first.size, "second": cp.size}, headers=h)
    proof = r.json()
    assert (proof["first"], proof["second"]) == (first.size, cp.size)
    hashes = [base64.b64decode(x) for x in proof["hashes"]]
    assert merkle.verify_consistency(first.size, cp.size, hashes, first.root, cp.root)
    r = await client.get("/v1/audit/proof/consistency", params={"first": 1}, headers=h)
    hashes = [base64.b64decode(x) for x in r.json()["hashes"]]
    r = await client.get("/v1/audit/events/0", headers=h)
    leaf0 = base64.b64decode(r.json()["leaf_hash"])
    assert merkle.verify_consistency(1, cp.size, hashes, leaf0, cp.root)

    assert (await client.get(f"/v1/audit/events/{cp.size + 1000}", headers=h)).status_code == 404
    r = await client.get("/v1/audit/proof/inclusion", params={"seq": 0, "tree_size": 10**6},
                         headers=h)
    assert r.status_code == 422


async def test_agency_callers_see_only_their_agency(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    body = await _send(client, tf)
    rid = body["manifest"]["referral_id"]
    await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("legal"))
    await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("ngo"))
    await tf.sequence()
    for name in ("legal", "shelter", "ngo"):
        agency = tf[name].agency_id
        h = await tf.headers(name)
        items = await _events(client, h)
        assert items
        assert all(agency in (i["event"]["actor_agency"], i["event"]["subject_agency"])
                   for i in items), name
        r = await client.get("/v1/audit/export", headers=h)
        exported = [json.loads(line)["event"] for line in r.text.splitlines()]
        assert exported
        assert all(agency in (e["actor_agency"], e["subject_agency"]) for e in exported)
    legal = [i["event"] for i in await _events(client, await tf.headers("legal"), resource_id=rid)]
    assert [(e["action"], e["outcome"]) for e in legal] == [("referral:read", "ok")]
    # Someone else's event is invisible by seq as well.
    h = await tf.headers("office", "auditor")
    ngo_denied = await _events(client, h, actor=_client_id(tf, "ngo"), resource_id=rid)
    assert len(ngo_denied) == 1
    seq = ngo_denied[0]["seq"]
    assert seq is not None
    r = await client.get(f"/v1/audit/events/{seq}", headers=await tf.headers("legal"))
    assert r.status_code == 404
    assert (await client.get(f"/v1/audit/events/{seq}", headers=await tf.headers("ngo"))
            ).status_code == 200


async def test_admins_may_not_read_the_audit_log(client: httpx.AsyncClient, tf: TaskForce) -> None:
    await tf.sequence()
    admin = await tf.headers("office", "admin")
    for path, params in [
        ("/v1/audit/events", {}),
        ("/v1/audit/export", {"format": "ndjson"}),
        ("/v1/audit/events/0", {}),
        ("/v1/audit/proof/inclusion", {"seq": 0}),
    ]:
        r = await client.get(path, params=params, headers=admin)
        assert r.status_code == 403, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    # the log key, checkpoints and consistency proofs are every client's to pin and
    # verify (an admin's CLI too); they hold no event
    for path, params in [
        ("/v1/audit/checkpoint", {}),
        ("/v1/audit/proof/consistency", {"first": 0}),
        ("/v1/audit/log-key", {}),
    ]:
        assert (await client.get(path, params=params, headers=admin)).status_code == 200, path
    assert (await client.get("/v1/audit/events")).status_code == 401
    denied = await _events(client, await tf.headers("office", "auditor"),
                           actor=_client_id(tf, "office", "admin"), action="access:denied")
    assert len(denied) == 4
    assert all(e["event"]["outcome"] == "denied" for e in denied)


async def test_a_rolled_back_action_leaves_no_event(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    body = tf.seal(
        "shelter", {"full_name": "Ana Example"}, {"full_name": {"legal": "investigation"}}
    )
    rid = body["manifest"]["referral_id"]
    body["signature"] = base64.urlsafe_b64encode(bytes(64)).decode().rstrip("=")
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 422, r.text
    h = await tf.headers("office", "auditor")
    assert [e for e in await _events(client, h, resource_id=rid)
            if e["event"]["outcome"] != "denied"] == []
    assert await _db_rows(tf.app, "SELECT id FROM referral") == []
    # A query that fails records no audit:query event either.
    before = len(await _events(client, h, action="audit:query"))
    r = await client.get("/v1/audit/events", params={"cursor": "!"}, headers=h)
    assert r.status_code == 400
    assert len(await _events(client, h, action="audit:query")) == before + 1  # the count query

    # At the service level: an event recorded in a transaction that rolls back is gone.
    counts = "SELECT (SELECT count(*) FROM audit_event), (SELECT count(*) FROM audit_pending)"
    before_rows = await _db_rows(tf.app, counts)
    with pytest.raises(RuntimeError, match="after recording"):
        await _record_then_fail(tf.app)
    assert await _db_rows(tf.app, counts) == before_rows


async def _record_then_fail(app: Any) -> None:
    async with app.state.sessionmaker() as db, db.begin():
        await audit.record(db, Actor.system(), Action.RETENTION_PURGE, "referral", None)
        raise RuntimeError("the action failed after recording its event")


async def test_no_event_carries_ciphertext_keys_or_tokens(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    sealed = await _send_sealed(client, tf)
    body = sealed.body
    rid = body["manifest"]["referral_id"]
    for name, role in [("legal", "caseworker"), ("police", "liaison"), ("shelter", "caseworker")]:
        r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers(name, role))
        assert r.status_code == 200, r.text
    r = await client.post(
        f"/v1/referrals/{rid}/revocations",
        json={"revocations": [{"fid": sealed.fids["full_name"],
                               "recipient": tf["police"].agency_id}]},
        headers=await tf.headers("shelter"),
    )
    assert r.status_code == 200, r.text
    note = env.seal_note("Intake Monday 10:00 at the back door", tf["shelter"].keys.enc_public)
    status = env.sign_status(
        referral_id=rid, recipient=tf["legal"].agency_id, status="accepted", reason=None,
        note=note, signed_at=rfc3339(datetime.now(UTC)), sig_seed=tf["legal"].keys.sig_seed,
    )
    r = await client.post(f"/v1/referrals/{rid}/status", json=status,
                          headers=await tf.headers("legal"))
    assert r.status_code == 200, r.text
    await tf.sequence()
    secrets = [
        *body["ciphertexts"].values(),
        *(w["wrapped_key"] for w in body["wrapped_keys"]),
        body["signature"],
        note,
        *(m._tokens[role] for m in tf.members.values() for role in m._tokens),
    ]
    assert len(secrets) > 8
    canonicals = [r[0] for r in await _db_rows(tf.app, "SELECT canonical FROM audit_event")]
    h = await tf.headers("office", "auditor")
    exported = (await client.get("/v1/audit/export", headers=h)).text
    for secret in secrets:
        for part in (secret, secret[:43]):
            assert part not in exported
            assert not any(part in c for c in canonicals)
    for name in FIELD_NAMES:
        assert name not in exported
        assert not any(name in c for c in canonicals)


async def test_events_are_newest_first_by_their_time_and_a_past_window_is_one_range(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    """Ordered by the event's own time (what its leaf says), then id: events whose ids
    are not in time order (two workers, a group commit) still page newest first, each
    once, and a window far in the past finds exactly its events."""
    agency = tf["legal"].agency_id
    base = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    written = []  # inserted in this order (ids ascending), times out of order
    for seconds in (30, 0, 20, 10, 40):
        event = audit.build_event(
            audit.PendingEvent(
                actor=Actor(client_id="c-1", agency_id=agency, role="caseworker"),
                action=Action.REFERRAL_READ,
                resource_type="referral",
                resource_id=f"r-{seconds}",
            ),
            ts=base + timedelta(seconds=seconds),
            event_id=f"00000000-0000-4000-8000-0000000000{seconds:02d}",
        )
        written.append(event["event_id"])
        async with tf.app.state.engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO audit_event (event_id, ts, canonical) VALUES (:e, :t, :c)"),
                {"e": event["event_id"], "t": base + timedelta(seconds=seconds),
                 "c": canonical_json(event).decode()},
            )
    h = await tf.headers("office", "auditor")
    by_time = [written[i] for i in (4, 0, 2, 3, 1)]  # 40, 30, 20, 10, 0 seconds
    old = {"agency": agency, "until": "2025-03-02T00:00:00Z"}
    assert [e["event"]["event_id"] for e in await _events(client, h, **old)] == by_time
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {**old, "limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/audit/events", params=params, headers=h)
        assert r.status_code == 200, r.text
        seen += [i["event"]["event_id"] for i in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == by_time
    window = {"agency": agency, "since": "2025-03-01T12:00:05Z", "until": "2025-03-01T12:00:35Z"}
    assert [e["event"]["event_id"] for e in await _events(client, h, **window)] == by_time[1:4]
    action_window = {**window, "action": "referral:read"}
    found = await _events(client, h, **action_window)
    assert [e["event"]["event_id"] for e in found] == by_time[1:4]
