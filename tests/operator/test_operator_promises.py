"""Every promise of DESIGN.md "The operator is the adversary", attacked as the operator would.

Each test is named after the promise it holds. The attacks are done the way
whoever runs the gateway could: direct SQL with the gateway's own credentials
(or as a superuser, dropping the append-only triggers, where the promise is
"caught" rather than "prevented"), or a transport in front of the real app
that serves what the operator wants (a proxy). Every test runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.client.access_report import access_report
from app.client.audit_verify import VerifyReport, verify_log
from app.client.errors import (
    AgencyKeyError,
    KeyTransparencyError,
    LogConsistencyError,
    PinMismatchError,
)
from app.client.keyfile import KeyFile
from app.client.sdk import RefgateClient
from app.client.transparency import Pins
from app.crypto import keydir, keys
from app.crypto.canonical import canonical_json
from app.crypto.checkpoint import directory_line, open_checkpoint, sign_checkpoint, verifier_key
from app.crypto.encoding import b64_encode, b64url_encode
from app.services import sequencer
from migrations import append_only
from tests.taskforce import TaskForce

Rewrite = Callable[[httpx.Request, httpx.Response], Awaitable[httpx.Response | None]]


class Proxy(httpx.AsyncBaseTransport):
    """The operator standing between a client and the real app: forwards every request,
    lets ``rewrite`` replace an answer, and records what reached the server."""

    def __init__(self, app: Any, rewrite: Rewrite | None = None) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.rewrite = rewrite
        self.requests: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if self.rewrite is not None:
            replaced = await self.rewrite(request, response)
            if replaced is not None:
                return replaced
        return response


def log_key_of(app: Any) -> str:
    return verifier_key(app.state.settings.audit.log_origin, app.state.server_keys.log_public)


def key_file(tf: TaskForce, name: str, role: str = "caseworker") -> KeyFile:
    m = tf[name]
    client_id, auth = m.clients[role]
    return KeyFile(enc_private=m.keys.enc_private, sig_seed=m.keys.sig_seed, auth_seed=auth.seed,
                   agency_id=m.agency_id, client_id=client_id, role=role)


@pytest.fixture
async def sdk(app: Any, tf: TaskForce) -> AsyncIterator[Callable[..., RefgateClient]]:
    made: list[RefgateClient] = []

    def make(name: str, role: str = "caseworker", **kwargs: Any) -> RefgateClient:
        kwargs.setdefault("transport", httpx.ASGITransport(app=app))
        kwargs.setdefault("log_key", log_key_of(app))
        kwargs.setdefault("key_proof_timeout", 0.5)
        client = RefgateClient(key_file(tf, name, role), base_url="http://test", **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


async def _sql(app: Any, *statements: tuple[str, dict[str, Any]]) -> None:
    """Run statements with the gateway's own database credentials."""
    async with app.state.engine.begin() as conn:
        for stmt, params in statements:
            await conn.execute(text(stmt), params)


async def _as_superuser(app: Any, *statements: tuple[str, dict[str, Any]]) -> None:
    """Run statements with the append-only triggers dropped (what a superuser can do)."""
    dialect = app.state.engine.dialect.name
    async with app.state.engine.begin() as conn:
        for stmt in append_only.drop(dialect):
            await conn.execute(text(stmt))
        for stmt, params in statements:
            await conn.execute(text(stmt), params)
        for stmt in append_only.install(dialect):
            await conn.execute(text(stmt))


async def _verify_full(app: Any, tf: TaskForce, tmp_path: Path, **kw: Any) -> tuple[
    VerifyReport, str
]:
    headers = await tf.headers("office", "auditor")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                 headers=headers) as http:
        out = io.StringIO()
        report = await verify_log(http, state_file=tmp_path / "state.json", full=True,
                                  log_key=log_key_of(app), out=out, **kw)
    return report, out.getvalue()


CONSENT = {"full_name": {"legal": "service_provision", "police": "investigation"}}


async def _send(tf: TaskForce, client: httpx.AsyncClient) -> str:
    body = tf.seal("shelter", {"full_name": "Maria Example"}, CONSENT)
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    return str(body["manifest"]["referral_id"])


# ---------------------------------------------------------------- key transparency


async def test_rolled_back_key_is_refused_by_the_sdk(
    app: Any, tf: TaskForce, client: httpx.AsyncClient, sdk: Callable[..., RefgateClient]
) -> None:
    """The police unit's key was rotated (a lost laptop); the operator swaps the old and
    new keys' statuses back with one UPDATE. The SDK must not encrypt to the old key."""
    police = tf["police"]
    old_kid = police.keys.enc_kid
    fresh = keys.generate_agency_keys()
    r = await client.post(f"/v1/agencies/{police.agency_id}/keys",
                          json={"enc_key": b64url_encode(fresh.enc_public)},
                          headers=await tf.headers("office", "admin"))
    assert r.status_code == 201, r.text
    await tf.sequence()
    await _sql(app, (
        "UPDATE agency_key SET status = CASE WHEN kid = :old THEN 'current' ELSE 'retired' END "
        "WHERE kid IN (:old, :new)", {"old": old_kid, "new": fresh.enc_kid}))

    proxy = Proxy(app)
    shelter = sdk("shelter", transport=proxy)
    with pytest.raises(AgencyKeyError) as refused:
        await shelter.send_referral(
            {"full_name": "Maria Example"},
            {"full_name": {police.agency_id: "investigation"}},
            {police.agency_id: {"services": ["investigation"], "urgency": "urgent"}},
        )
    message = str(refused.value)
    assert refused.value.agency == police.agency_id
    assert police.agency_id in message
    assert f"states {fresh.enc_kid}" in message
    assert old_kid in message
    assert ("POST", "/v1/referrals") not in proxy.requests


async def test_suspended_agency_is_refused_by_the_sdk(
    app: Any, tf: TaskForce, client: httpx.AsyncClient, sdk: Callable[..., RefgateClient]
) -> None:
    """An agency suspended in the log stays suspended for clients, whatever the row says."""
    legal = tf["legal"]
    r = await client.post(f"/v1/agencies/{legal.agency_id}/suspend",
                          headers=await tf.headers("office", "admin"))
    assert r.status_code == 200, r.text
    await tf.sequence()
    await _sql(app, ("UPDATE agency SET status = 'active' WHERE id = :a", {"a": legal.agency_id}))
    with pytest.raises(AgencyKeyError, match=f"states that agency {legal.agency_id} is suspended"):
        await sdk("shelter").agency_key(legal.agency_id, "enc")


async def test_duplicated_directory_leaf_for_one_agency_is_refused(
    app: Any, tf: TaskForce, sdk: Callable[..., RefgateClient]
) -> None:
    """The operator (who holds the log key) signs a directory with two leaves for the
    police unit, one with its genuine key and one with the operator's, and serves the
    genuine one's proof. The neighbours give it away."""
    await tf.sequence()
    police = tf["police"].agency_id
    seed = app.state.server_keys.log_seed
    evil = keys.generate_agency_keys()

    async def forged_directory() -> list[dict[str, Any]]:
        async with app.state.sessionmaker() as db:
            head = await sequencer.tree_head(db)
            state = await sequencer.directory_state(db, head.size)
        leaves = [dict(leaf) for leaf in keydir.sorted_leaves(state)]
        i = next(i for i, leaf in enumerate(leaves) if leaf["agency"] == police)
        twin = {**leaves[i], "enc_kid": evil.enc_kid}
        return [*leaves[: i + 1], twin, *leaves[i + 1 :]]

    leaves = await forged_directory()

    async def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        path = request.url.path
        if path == "/v1/audit/checkpoint":
            cp = open_checkpoint(response.text, log_key_of(app))
            n, root = keydir.root_of(leaves)
            return httpx.Response(200, text=sign_checkpoint(
                cp.origin, cp.size, cp.root, seed, extensions=(directory_line(n, root),)))
        if path == f"/v1/agencies/{police}/keys/proof":
            proof = keydir.prove(leaves, police)
            assert proof is not None
            enc = {**proof, "hashes": [b64_encode(h) for h in proof["hashes"]],
                   "neighbours": [{**nb, "hashes": [b64_encode(h) for h in nb["hashes"]]}
                                  for nb in proof["neighbours"]]}
            return httpx.Response(200, json={"tree_size": int(request.url.params["tree_size"]),
                                             **enc})
        return None

    shelter = sdk("shelter", transport=Proxy(app, rewrite))
    with pytest.raises(KeyTransparencyError, match=f"more than one leaf for agency {police}"):
        await shelter.agency_key(police, "enc")


# ---------------------------------------------------------------- pinned checkpoints


async def test_checkpoint_signed_by_another_key_is_refused(
    app: Any, tf: TaskForce, sdk: Callable[..., RefgateClient]
) -> None:
    """A server (or a proxy) with its own log key: its checkpoint and key are refused,
    naming the pinned key and the one offered."""
    await tf.sequence()
    imposter = keys.generate_agency_keys()
    origin = app.state.settings.audit.log_origin
    imposter_vkey = verifier_key(origin, imposter.sig_public)

    async def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.url.path == "/v1/audit/log-key":
            return httpx.Response(200, text=imposter_vkey + "\n")
        if request.url.path == "/v1/audit/checkpoint":
            cp = open_checkpoint(response.text, log_key_of(app))
            return httpx.Response(200, text=sign_checkpoint(
                origin, cp.size, cp.root, imposter.sig_seed, extensions=cp.extensions))
        return None

    proxy = Proxy(app, rewrite)
    shelter = sdk("shelter", transport=proxy)
    with pytest.raises(PinMismatchError) as refused:
        await shelter.verified_checkpoint()
    assert refused.value.expected == log_key_of(app)
    assert refused.value.offered == imposter_vkey
    assert "refgate configure --log-key" in str(refused.value)


async def test_checkpoint_not_extending_the_pin_is_refused(
    app: Any, tf: TaskForce, client: httpx.AsyncClient, sdk: Callable[..., RefgateClient],
    tmp_path: Path,
) -> None:
    """The operator rewrites history and signs a bigger tree that does not contain the
    pinned one: a client with a pin refuses it, and the pin does not move."""
    await tf.sequence()
    pins_file = tmp_path / "k.json.pins.json"
    first = await sdk("shelter", pins=pins_file).verified_checkpoint()
    await _send(tf, client)
    await tf.sequence()
    seed = app.state.server_keys.log_seed

    async def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.url.path == "/v1/audit/checkpoint":
            cp = open_checkpoint(response.text, log_key_of(app))
            return httpx.Response(200, text=sign_checkpoint(
                cp.origin, cp.size, b"\x05" * 32, seed, extensions=cp.extensions))
        return None

    with pytest.raises(LogConsistencyError, match="does not extend the pinned one"):
        await sdk("shelter", pins=pins_file, transport=Proxy(app, rewrite)).verified_checkpoint()
    pinned = Pins.load(pins_file)
    assert (pinned.size, pinned.root) == (first.size, first.root)
    # and a rolled-back (smaller) checkpoint is refused too
    async def older(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.url.path == "/v1/audit/checkpoint":
            return httpx.Response(200, text=sign_checkpoint(
                first.origin, first.size - 1, b"\x05" * 32, seed, extensions=first.extensions))
        return None

    with pytest.raises(LogConsistencyError, match="older than the pinned one"):
        await sdk("shelter", pins=pins_file, transport=Proxy(app, older)).verified_checkpoint()


# ---------------------------------------------------------------- completeness


async def test_read_erased_from_the_queue_is_named_by_verify_full(
    app: Any, tf: TaskForce, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The operator deletes a police read from the sequencing queue. The gateway's own
    role cannot (a trigger, and no DELETE grant on PostgreSQL); a superuser who drops the
    guard can, and `verify --full` names the event; the sequencer's sweep puts it back."""
    rid = await _send(tf, client)
    await tf.sequence()
    r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("police", "liaison"))
    assert r.status_code == 200
    async with app.state.engine.connect() as conn:
        event_id, row_id = (await conn.execute(text(
            "SELECT event_id, id FROM audit_event WHERE action = 'referral:read' "
            "AND resource_id = :r"), {"r": rid})).one()
    with pytest.raises(DBAPIError, match="not in the log yet"):
        await _sql(app, ("DELETE FROM audit_pending WHERE event_id = :i", {"i": row_id}))

    await _sql(app, ("DROP TRIGGER audit_pending_guard" + (
        " ON audit_pending" if app.state.engine.dialect.name == "postgresql" else ""), {}))
    await _sql(app, ("DELETE FROM audit_pending WHERE event_id = :i", {"i": row_id}))
    async with app.state.sessionmaker() as db, db.begin():
        await sequencer.integrate_batch(db, 1000)  # no sweep: the read stays out
        await sequencer.sign_checkpoint(db, app.state.settings, app.state.server_keys)
    report, out = await _verify_full(app, tf, tmp_path, grace=0)
    assert not report.ok
    assert f"event {event_id} (referral:read by {tf['police'].agency_id}" in out
    assert "still outside the tree" in out

    await tf.sequence()  # the sweep finds it and integrates it
    report, out = await _verify_full(app, tf, tmp_path / "again", grace=0)
    assert report.ok, out


async def test_read_held_out_of_the_tree_is_named_by_verify_full(
    app: Any, tf: TaskForce, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The operator keeps the sequencer from integrating (holding the tree-state row):
    after the grace period `verify --full` fails naming the read; within it, it passes."""
    rid = await _send(tf, client)
    await tf.sequence()
    r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("police", "liaison"))
    assert r.status_code == 200
    async with app.state.engine.connect() as conn:
        event_id = (await conn.execute(text(
            "SELECT event_id FROM audit_event WHERE action = 'referral:read' "
            "AND resource_id = :r"), {"r": rid})).scalar_one()
    report, out = await _verify_full(app, tf, tmp_path / "a", grace=3600)
    assert report.ok, out
    report, out = await _verify_full(app, tf, tmp_path / "b", grace=0)
    assert not report.ok
    assert f"event {event_id} (referral:read" in out


# ---------------------------------------------------------------- unbendable queries


@pytest.mark.parametrize("column", ["subject_agency", "resource_id", "actor_agency"])
async def test_query_columns_cannot_be_bent(
    app: Any, tf: TaskForce, client: httpx.AsyncClient, column: str
) -> None:
    """The columns queries and access reports filter on are derived from the leaf: even
    with the append-only triggers dropped, writing one leaves it as the leaf says (a
    trigger on PostgreSQL, generated columns on SQLite), as does an INSERT that names it."""
    rid = await _send(tf, client)
    created = "action = 'referral:create' AND canonical LIKE :like"
    like = {"like": f'%"resource_id":"{rid}"%'}
    try:
        await _as_superuser(app, (
            f"UPDATE audit_event SET {column} = 'x' WHERE {created}", like))  # noqa: S608
    except DBAPIError as exc:  # SQLite: a generated column cannot be written at all
        assert app.state.engine.dialect.name == "sqlite", exc  # noqa: PT017
        assert "generated" in str(exc)  # noqa: PT017
    async with app.state.engine.connect() as conn:
        value, canonical = (await conn.execute(text(
            f"SELECT {column}, canonical FROM audit_event WHERE {created}"), like)).one()  # noqa: S608
    assert value == json.loads(canonical)[column] != "x"
    if app.state.engine.dialect.name == "postgresql":
        forged = {"event_id": "forged-event", "canonical": canonical.replace(rid, "other")}
        async with app.state.engine.begin() as conn:
            await conn.execute(text(
                f"INSERT INTO audit_event (event_id, ts, canonical, {column}) "  # noqa: S608
                "VALUES (:event_id, now(), :canonical, 'x')"), forged)
            value = (await conn.execute(text(
                f"SELECT {column} FROM audit_event WHERE event_id = 'forged-event'"))).scalar()  # noqa: S608
            assert value == json.loads(forged["canonical"])[column] != "x"
            await conn.rollback()


async def test_bent_leaf_to_hide_a_read_is_named_by_verify_full(
    app: Any, tf: TaskForce, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """To take a police read out of the shelter's access report a superuser must change
    the leaf itself (the columns follow it); `verify --full` names the event's seq."""
    rid = await _send(tf, client)
    r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("police", "liaison"))
    assert r.status_code == 200
    await tf.sequence()
    async with app.state.engine.connect() as conn:
        row_id, canonical, seq = (await conn.execute(text(
            "SELECT e.id, e.canonical, l.seq FROM audit_event e JOIN audit_leaf l "
            "ON l.event_id = e.id WHERE e.action = 'referral:read' AND e.resource_id = :r"),
            {"r": rid})).one()
    bent = json.loads(canonical)
    bent["subject_agency"] = tf["ngo"].agency_id
    await _as_superuser(app, ("UPDATE audit_event SET canonical = :c WHERE id = :i",
                              {"c": canonical_json(bent).decode(), "i": row_id}))
    async with app.state.engine.connect() as conn:
        subject = (await conn.execute(text("SELECT subject_agency FROM audit_event WHERE id = :i"),
                                      {"i": row_id})).scalar_one()
    assert subject == tf["ngo"].agency_id  # the query column follows the leaf …
    report, out = await _verify_full(app, tf, tmp_path)
    assert not report.ok  # … and the tree exposes the changed leaf
    assert f"at seq {seq}" in out


# ---------------------------------------------------------------- access report


async def test_senders_access_report_shows_denied_attempts(
    app: Any, tf: TaskForce, client: httpx.AsyncClient, sdk: Callable[..., RefgateClient]
) -> None:
    """A denied attempt on a referral names its sender, so the sender's access report
    lists it, with the read and every event proven in the pinned checkpoint."""
    rid = await _send(tf, client)
    r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("ngo"))
    assert r.status_code == 404
    r = await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("police", "liaison"))
    assert r.status_code == 200
    await tf.sequence()
    _, rows = await access_report(sdk("shelter"), rid)
    seen = {(row["action"], row["outcome"], row["actor_agency"]) for row in rows}
    assert ("referral:read", "denied", tf["ngo"].agency_id) in seen
    assert ("referral:read", "ok", tf["police"].agency_id) in seen
    assert ("referral:create", "ok", tf["shelter"].agency_id) in seen
    proven = [row for row in rows if row["action"] == "referral:read"]
    assert proven
    assert {row["proof"] for row in proven} == {"ok"}


# ---------------------------------------------------------------- key events


async def test_key_event_left_out_of_the_directory_is_caught(
    app: Any, tf: TaskForce, client: httpx.AsyncClient, sdk: Callable[..., RefgateClient],
    tmp_path: Path,
) -> None:
    """The operator makes the signed directory forget a rotation (the gateway role may
    update the tree-state row): the clients' proofs stop verifying, and `verify --full`,
    replaying the key events, names the directory the checkpoint commits to."""
    police = tf["police"]
    old_kid = police.keys.enc_kid
    fresh = keys.generate_agency_keys()
    r = await client.post(f"/v1/agencies/{police.agency_id}/keys",
                          json={"enc_key": b64url_encode(fresh.enc_public),
                                "sign_key": b64url_encode(fresh.sig_public)},
                          headers=await tf.headers("office", "admin"))
    assert r.status_code == 201, r.text
    police.keys = fresh
    await tf.sequence()
    async with app.state.sessionmaker() as db:
        head = await sequencer.tree_head(db)
        state = await sequencer.directory_state(db, head.size)
    state[police.agency_id] = {**state[police.agency_id], "enc_kid": old_kid}
    n, root = keydir.root_of(keydir.sorted_leaves(state))
    await _sql(app, ("UPDATE audit_tree_state SET directory_size = :n, directory_root = :r",
                     {"n": n, "r": root}))
    await _send(tf, client)  # new events, so a new checkpoint is signed with the bent root
    await tf.sequence()

    with pytest.raises(KeyTransparencyError, match="does not verify against the signed root"):
        await sdk("shelter").agency_key(police.agency_id, "enc")
    report, out = await _verify_full(app, tf, tmp_path)
    assert not report.ok
    assert "key directory" in out


async def test_old_checkpoints_directory_proofs_stay_servable(
    app: Any, tf: TaskForce, client: httpx.AsyncClient
) -> None:
    """After a rotation, the checkpoint signed before it still proves the old kid, and the
    latest one the new kid: a client holding an old checkpoint can still check it."""
    police = tf["police"]
    await tf.sequence()
    headers = await tf.headers("legal")
    before = (await client.get(f"/v1/agencies/{police.agency_id}/keys/proof",
                               headers=headers)).json()
    fresh = keys.generate_agency_keys()
    r = await client.post(f"/v1/agencies/{police.agency_id}/keys",
                          json={"enc_key": b64url_encode(fresh.enc_public)},
                          headers=await tf.headers("office", "admin"))
    assert r.status_code == 201, r.text
    await tf.sequence()
    after = (await client.get(f"/v1/agencies/{police.agency_id}/keys/proof",
                              headers=headers)).json()
    again = (await client.get(f"/v1/agencies/{police.agency_id}/keys/proof",
                              params={"tree_size": before["tree_size"]}, headers=headers)).json()
    assert after["tree_size"] > before["tree_size"]
    assert (before["leaf"]["enc_kid"], after["leaf"]["enc_kid"]) == (police.keys.enc_kid,
                                                                      fresh.enc_kid)
    assert again == before
    missing = await client.get(f"/v1/agencies/{police.agency_id}/keys/proof",
                               params={"tree_size": before["tree_size"] + 1}, headers=headers)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
