"""Signed webhooks through the transactional outbox, delivered to a real local receiver.

The dispatcher is driven by calling ``dispatch_once`` (the background runner is
off in tests); backoff is configured to zero so that a retry is due at once.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from app.client import webhook_listen
from app.client.webhook_verify import WebhookVerificationError, verify_webhook
from app.config import Settings, WebhookSettings
from app.crypto import envelope as env
from app.identity import ROLE_SCOPES, Principal, Role
from app.models.webhook_tables import WebhookDelivery
from app.services import referrals, webhooks
from tests.taskforce import TaskForce, rfc3339
from tests.webhooks import Receiver

ALL_EVENTS = [
    "referral.received",
    "referral.status_changed",
    "referral.cancelled",
    "grant.added",
    "consent.revoked",
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhooks": WebhookSettings(
                dispatcher_enabled=False,
                allow_private_targets=True,
                max_attempts=3,
                backoff_base=0,
                backoff_cap=0,
                timeout=5,
                secret_grace=3600,
            )
        }
    )


@pytest.fixture
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with webhooks.http_client(settings.webhooks) as c:
        yield c


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


async def _dispatch(app: Any, http: httpx.AsyncClient) -> webhooks.DispatchReport:
    return await webhooks.dispatch_once(app.state.sessionmaker, app.state.settings, http)


async def _subscribe(
    client: httpx.AsyncClient,
    tf: TaskForce,
    name: str,
    url: str,
    events: list[str] | None = None,
    role: str = "caseworker",
) -> dict[str, Any]:
    r = await client.post(
        "/v1/webhooks",
        json={"url": url, "event_types": events or ALL_EVENTS},
        headers=await tf.headers(name, role),
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def _send(
    client: httpx.AsyncClient, tf: TaskForce, consent: dict[str, dict[str, str]], **kw: Any
) -> dict[str, Any]:
    fields = {f: f"secret {f} of the survivor" for f in consent}
    body = tf.seal("shelter", fields, consent, **kw)
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    return body


async def _deliveries(
    client: httpx.AsyncClient, tf: TaskForce, name: str, hook_id: str, role: str = "caseworker"
) -> list[dict[str, Any]]:
    r = await client.get(
        f"/v1/webhooks/{hook_id}/deliveries", headers=await tf.headers(name, role)
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def _outbox_size(app: Any) -> int:
    async with app.state.sessionmaker() as db:
        return int(await db.scalar(select(func.count()).select_from(WebhookDelivery)) or 0)


# ---------------------------------------------------------------- signing


def test_signature_matches_the_standard_webhooks_vector_and_verifies() -> None:
    # Published in the Standard Webhooks reference library's tests.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, ts, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    sig = webhooks.sign(secret, msg_id, ts, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"Webhook-Id": msg_id, "Webhook-Timestamp": str(ts), "Webhook-Signature": sig}
    assert verify_webhook(secret, headers, body, now=ts + 10) == {"test": 2432232314}
    # several signatures, one of them valid (rotation), unknown versions skipped
    multi = {**headers, "Webhook-Signature": f"v1a,AAAA v1,{'A' * 44} {sig}"}
    assert verify_webhook(secret, multi, body, now=ts) == {"test": 2432232314}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body": b'{"test": 2432232315}'}, "no valid signature"),
        ({"now": 1614265330 + 301}, "too old"),
        ({"now": 1614265330 - 301}, "too new"),
        ({"drop": "webhook-id"}, "missing"),
        ({"secret": "whsec_" + "B" * 32}, "no valid signature"),
    ],
)
def test_tampered_stale_or_incomplete_messages_are_refused(
    change: dict[str, Any], message: str
) -> None:
    secret = change.get("secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    msg_id, ts, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": webhooks.sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", msg_id, ts, body
        ),
    }
    headers.pop(change.get("drop", ""), None)
    with pytest.raises(WebhookVerificationError, match=message):
        verify_webhook(secret, headers, change.get("body", body), now=change.get("now", ts))


def test_server_and_client_share_one_signature_module_of_the_standard_library_only() -> None:
    """The dispatcher and the receiver's verifier decode ``whsec_`` secrets with the
    same code, and that code imports nothing of the server (the client ships alone)."""
    import ast
    import sys

    from app.client import webhook_verify
    from app.crypto import webhook_signature

    assert webhooks.sign is webhook_signature.sign
    assert webhooks.new_secret is webhook_signature.new_secret
    assert webhook_verify.signature_matches is webhook_signature.signature_matches
    tree = ast.parse(Path(webhook_signature.__file__).read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names) | {
        "__future__"
    }
    secret = webhook_signature.new_secret()
    assert len(webhook_signature.secret_key(secret)) == webhook_signature.SECRET_BYTES


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not*base64!", "whsec_" + "A" * 5])
def test_a_malformed_secret_is_refused_on_both_sides(secret: str) -> None:
    from app.crypto.webhook_signature import InvalidSecret

    with pytest.raises(InvalidSecret):
        webhooks.sign(secret, "msg_1", 1614265330, b"{}")
    with pytest.raises(WebhookVerificationError, match="secret"):
        verify_webhook(secret, {}, b"{}")


# ---------------------------------------------------------------- delivery


async def test_consented_recipient_is_notified_with_a_verifiable_signed_payload(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    legal = await _subscribe(client, tf, "legal", receiver.url + "/legal")
    police = await _subscribe(client, tf, "police", receiver.url + "/police", role="liaison")
    ngo = await _subscribe(client, tf, "ngo", receiver.url + "/ngo")
    assert legal["secret"].startswith("whsec_")
    assert "secret" not in (
        await client.get("/v1/webhooks", headers=await tf.headers("legal"))
    ).json()["items"][0]

    # police subscribed but is not a recipient: it hears nothing of this referral
    body = await _send(
        client,
        tf,
        {"full_name": {"legal": "service_provision"}},
        requests={"legal": {"services": ["legal", "immigration_legal"], "urgency": "emergency",
                            "case_ref": "case-17"}},
    )
    rid = body["manifest"]["referral_id"]
    report = await _dispatch(app, http)
    assert (report.claimed, report.delivered) == (1, 1)
    assert [r.path for r in receiver.requests] == ["/legal"]

    req = receiver.requests[0]
    payload = verify_webhook(legal["secret"], req.headers, req.body)
    assert payload["type"] == "referral.received"
    assert payload["data"] == {
        "referral_id": rid,
        "sender_agency": tf["shelter"].agency_id,
        "request": {
            "recipient": tf["legal"].agency_id,
            "services": ["legal", "immigration_legal"],
            "urgency": "emergency",
            "case_ref": "case-17",
        },
    }
    for secret in body["ciphertexts"].values():
        assert secret.encode() not in req.body
    assert b"full_name" not in req.body
    with pytest.raises(WebhookVerificationError):
        verify_webhook(police["secret"], req.headers, req.body)

    (delivery,) = await _deliveries(client, tf, "legal", legal["id"])
    assert delivery["id"] == req.headers["webhook-id"]
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "delivered",
        1,
        204,
    )
    assert await _deliveries(client, tf, "ngo", ngo["id"]) == []

    # with a consented field, law enforcement hears of the next one, and only of its own request
    await _send(
        client,
        tf,
        {"full_name": {"police": "investigation"}, "narrative": {"legal": "service_provision"}},
        requests={"police": {"services": ["investigation"], "urgency": "routine"},
                  "legal": {"services": ["legal"], "urgency": "urgent"}},
    )
    await _dispatch(app, http)
    assert sorted(r.path for r in receiver.requests[1:]) == ["/legal", "/police"]
    (to_police,) = [r for r in receiver.requests[1:] if r.path == "/police"]
    payload = verify_webhook(police["secret"], to_police.headers, to_police.body)
    assert payload["data"]["request"] == {
        "recipient": tf["police"].agency_id,
        "services": ["investigation"],
        "urgency": "routine",
        "case_ref": "c-1",
    }
    assert tf["legal"].agency_id.encode() not in to_police.body


async def _post_status(
    client: httpx.AsyncClient, tf: TaskForce, name: str, rid: str, status: str, role: str
) -> httpx.Response:
    body = env.sign_status(
        referral_id=rid, recipient=tf[name].agency_id, status=status, reason=None, note=None,
        signed_at=rfc3339(datetime.now(UTC)), sig_seed=tf[name].keys.sig_seed,
    )
    return await client.post(
        f"/v1/referrals/{rid}/status", json=body, headers=await tf.headers(name, role)
    )


async def test_lifecycle_events_reach_the_agencies_concerned(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    hooks = {
        name: await _subscribe(client, tf, name, f"{receiver.url}/{name}")
        for name in ("shelter", "legal", "ngo")
    }
    sealed = tf.sealed(
        "shelter",
        {"full_name": "secret full_name", "narrative": "secret narrative"},
        {"full_name": {"legal": "service_provision"}, "narrative": {"legal": "service_provision"}},
    )
    r = await client.post("/v1/referrals", json=sealed.body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    rid = sealed.body["manifest"]["referral_id"]
    narrative = sealed.fids["narrative"]
    for _ in range(2):  # the second, unchanged status is not an event
        r = await _post_status(client, tf, "legal", rid, "accepted", "caseworker")
        assert r.status_code == 200, r.text
    r = await client.post(
        f"/v1/referrals/{rid}/revocations",
        json={"revocations": [{"fid": narrative, "recipient": tf["legal"].agency_id}]},
        headers=await tf.headers("shelter"),
    )
    assert r.status_code == 200, r.text

    shelter = tf["shelter"]
    own = (await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("shelter"))).json()
    expires = rfc3339(datetime.now(UTC) + timedelta(days=10))
    update = env.amend(
        own,
        sender_agency=shelter.agency_id,
        sender_sig_seed=shelter.keys.sig_seed,
        sender_enc_private=shelter.keys.enc_private,
        grants=[
            env.Grant(
                field="narrative",
                recipient=tf["legal"].agency_id,
                enc_public=tf["legal"].keys.enc_public,
                purpose="service_provision",
                expires_at=expires,
            )
        ],
        requests=[],
    )
    r = await client.post(
        f"/v1/referrals/{rid}/grants", json=update, headers=await tf.headers("shelter")
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/referrals/{rid}/withdraw", headers=await tf.headers("shelter"))
    assert r.status_code == 200, r.text

    await _dispatch(app, http)
    seen: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for req in receiver.requests:
        name = req.path.strip("/")
        payload = verify_webhook(hooks[name]["secret"], req.headers, req.body)
        assert payload["data"]["referral_id"] == rid
        seen.setdefault(name, []).append((payload["type"], payload["data"]))
    assert sorted(t for t, _ in seen["shelter"]) == ["referral.status_changed"]
    assert seen["shelter"][0][1] == {
        "referral_id": rid,
        "recipient": tf["legal"].agency_id,
        "status": "accepted",
        "previous_status": "requested",
        "reason": None,
    }
    by_type = dict(seen["legal"])
    assert sorted(by_type) == [
        "consent.revoked",
        "grant.added",
        "referral.cancelled",
        "referral.received",
    ]
    assert by_type["consent.revoked"]["fids"] == [narrative]
    assert by_type["grant.added"]["fids"] == [narrative]
    assert by_type["referral.received"]["request"]["recipient"] == tf["legal"].agency_id
    assert "ngo" not in seen
    for req in receiver.requests:  # ids and statuses only: never a field name
        assert b"narrative" not in req.body
        assert b"full_name" not in req.body


async def test_delivery_is_retried_after_the_receiver_fails_twice(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, http: httpx.AsyncClient
) -> None:
    async with Receiver(script=[500, 503]) as receiver:
        hook = await _subscribe(client, tf, "legal", receiver.url, ["referral.received"])
        await _send(client, tf, {"full_name": {"legal": "service_provision"}})

        first = await _dispatch(app, http)
        assert (first.claimed, first.retrying) == (1, 1)
        (d,) = await _deliveries(client, tf, "legal", hook["id"])
        assert (d["status"], d["attempts"], d["last_status_code"]) == ("pending", 1, 500)
        assert d["next_attempt_at"] is not None

        second = await _dispatch(app, http)
        assert second.retrying == 1
        third = await _dispatch(app, http)
        assert third.delivered == 1
        assert (await _dispatch(app, http)).claimed == 0

    assert len(receiver.requests) == 3
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert len(ids) == 1, "a retry keeps the webhook-id so receivers can deduplicate"
    for r in receiver.requests:
        verify_webhook(hook["secret"], r.headers, r.body)
    (d,) = await _deliveries(client, tf, "legal", hook["id"])
    assert (d["status"], d["attempts"], d["last_status_code"], d["last_error"]) == (
        "delivered",
        3,
        204,
        None,
    )


async def test_dead_letter_after_max_attempts_then_replay_delivers(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, http: httpx.AsyncClient
) -> None:
    async with Receiver(script=[500, 500, 500]) as receiver:
        hook = await _subscribe(client, tf, "legal", receiver.url, ["referral.received"])
        await _send(client, tf, {"full_name": {"legal": "service_provision"}})
        for _ in range(3):
            await _dispatch(app, http)
        (d,) = await _deliveries(client, tf, "legal", hook["id"])
        assert (d["status"], d["attempts"], d["next_attempt_at"]) == ("dead", 3, None)
        assert (await _dispatch(app, http)).claimed == 0
        assert len(receiver.requests) == 3

        replay = f"/v1/webhooks/{hook['id']}/deliveries/{d['id']}/replay"
        assert (await client.post(replay, headers=await tf.headers("ngo"))).status_code == 404
        r = await client.post(replay, headers=await tf.headers("legal"))
        assert r.status_code == 202, r.text
        assert (r.json()["status"], r.json()["attempts"]) == ("pending", 0)
        assert (await _dispatch(app, http)).delivered == 1
        r = await client.post(replay, headers=await tf.headers("legal"))
        assert r.status_code == 409, r.text

    assert len(receiver.requests) == 4
    assert receiver.requests[-1].headers["webhook-id"] == d["id"]
    verify_webhook(hook["secret"], receiver.requests[-1].headers, receiver.requests[-1].body)
    (d,) = await _deliveries(client, tf, "legal", hook["id"])
    assert (d["status"], d["attempts"]) == ("delivered", 1)


async def test_unreachable_receiver_counts_as_a_failed_attempt(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, http: httpx.AsyncClient
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    hook = await _subscribe(
        client, tf, "legal", f"http://127.0.0.1:{closed_port}/", ["referral.received"]
    )
    await _send(client, tf, {"full_name": {"legal": "service_provision"}})
    assert (await _dispatch(app, http)).retrying == 1
    (d,) = await _deliveries(client, tf, "legal", hook["id"])
    assert d["status"] == "pending"
    assert d["last_status_code"] is None
    assert d["last_error"].startswith("ConnectError")


# ---------------------------------------------------------------- outbox


async def test_rejected_referral_notifies_no_one(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, receiver: Receiver
) -> None:
    await _subscribe(client, tf, "legal", receiver.url)
    body = tf.seal("shelter", {"full_name": "X"}, {"full_name": {"legal": "service_provision"}})
    body["signature"] = body["signature"][::-1]
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 422, r.text
    assert await _outbox_size(app) == 0


async def test_rolled_back_action_leaves_no_delivery(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, receiver: Receiver
) -> None:
    await _subscribe(client, tf, "legal", receiver.url)
    shelter = tf["shelter"]
    who = Principal(
        client_id=shelter.clients["caseworker"][0],
        agency_id=shelter.agency_id,
        agency_kind="shelter",
        role=Role.CASEWORKER,
        scopes=frozenset(str(s) for s in ROLE_SCOPES[Role.CASEWORKER]),
    )
    body = tf.seal("shelter", {"full_name": "X"}, {"full_name": {"legal": "service_provision"}})

    class Abort(Exception):
        pass

    async def create_then_fail() -> None:
        async with app.state.sessionmaker() as db, db.begin():
            await referrals.create(
                db, who, body, settings=app.state.settings, idempotency_key=None
            )
            in_txn = await db.scalar(select(func.count()).select_from(WebhookDelivery))
            assert in_txn == 1, "the delivery row is written with the action"
            raise Abort

    with pytest.raises(Abort):
        await create_then_fail()
    assert await _outbox_size(app) == 0

    async with app.state.sessionmaker() as db, db.begin():
        await referrals.create(db, who, body, settings=app.state.settings, idempotency_key=None)
    assert await _outbox_size(app) == 1


# ---------------------------------------------------------------- management


async def test_an_agency_sees_and_manages_only_its_own_webhooks(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, receiver: Receiver
) -> None:
    hook = await _subscribe(client, tf, "legal", receiver.url)
    assert hook["event_types"] == sorted(ALL_EVENTS)
    listed = (await client.get("/v1/webhooks", headers=await tf.headers("legal"))).json()
    assert [h["id"] for h in listed["items"]] == [hook["id"]]
    assert (await client.get("/v1/webhooks", headers=await tf.headers("ngo"))).json()[
        "items"
    ] == []

    ngo = await tf.headers("ngo")
    base = f"/v1/webhooks/{hook['id']}"
    for method, path in [
        ("GET", f"{base}/deliveries"),
        ("POST", f"{base}/rotate-secret"),
        ("POST", f"{base}/deliveries/msg_x/replay"),
        ("DELETE", base),
    ]:
        r = await client.request(method, path, headers=ngo)
        assert r.status_code == 404, (method, path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    for name, role in [("office", "auditor"), ("office", "admin")]:
        r = await client.get("/v1/webhooks", headers=await tf.headers(name, role))
        assert r.status_code == 403, r.text
    assert (await client.get("/v1/webhooks")).status_code == 401

    r = await client.delete(base, headers=await tf.headers("shelter", "liaison"))
    assert r.status_code == 404
    r = await client.delete(base, headers=await tf.headers("legal"))
    assert r.status_code == 204
    assert (await client.get("/v1/webhooks", headers=await tf.headers("legal"))).json()[
        "items"
    ] == []

    await tf.sequence()
    auditor = await tf.headers("office", "auditor")
    events = (
        await client.get("/v1/audit/events", params={"resource_id": hook["id"]}, headers=auditor)
    ).json()["items"]
    got = sorted((e["event"]["action"], e["event"]["outcome"]) for e in events)
    assert ("webhook:create", "ok") in got
    assert ("webhook:delete", "ok") in got
    assert ("webhook:rotate", "denied") in got
    assert ("webhook:read", "denied") in got


@pytest.mark.parametrize(
    ("url", "slug"),
    [
        ("ftp://127.0.0.1/x", "target-refused"),
        ("http://user:pw@127.0.0.1/x", "target-refused"),
        ("not a url", "target-refused"),
    ],
)
async def test_invalid_target_urls_are_refused(
    client: httpx.AsyncClient, tf: TaskForce, url: str, slug: str
) -> None:
    r = await client.post(
        "/v1/webhooks",
        json={"url": url, "event_types": ["referral.received"]},
        headers=await tf.headers("legal"),
    )
    assert r.status_code == 422, r.text
    assert r.json()["type"].endswith(slug)


async def test_unknown_or_repeated_event_types_are_refused(
    client: httpx.AsyncClient, tf: TaskForce, receiver: Receiver
) -> None:
    for events in (["referral.read"], ["grant.added", "grant.added"], []):
        r = await client.post(
            "/v1/webhooks",
            json={"url": receiver.url, "event_types": events},
            headers=await tf.headers("legal"),
        )
        assert r.status_code == 422, (events, r.text)


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.215.14/hook",
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/hook",
        "https://[::1]/hook",
        "https://[fe80::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://0.0.0.0/hook",
        "https://localhost/hook",
    ],
)
async def test_private_and_plain_http_targets_are_refused_by_default(url: str) -> None:
    with pytest.raises(webhooks.TargetRefused):
        await webhooks.check_target(url, WebhookSettings())


async def test_public_address_target_is_accepted() -> None:
    target = await webhooks.check_target("https://93.184.215.14:8443/hook", WebhookSettings())
    assert str(target.url) == "https://93.184.215.14:8443/hook"


async def test_delivery_time_check_refuses_a_target_that_became_private(
    app: Any,
    client: httpx.AsyncClient,
    tf: TaskForce,
    http: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    hook = await _subscribe(client, tf, "legal", receiver.url, ["referral.received"])
    await _send(client, tf, {"full_name": {"legal": "service_provision"}})
    strict = app.state.settings.model_copy(
        update={"webhooks": app.state.settings.webhooks.model_copy(
            update={"allow_private_targets": False}
        )}
    )
    report = await webhooks.dispatch_once(app.state.sessionmaker, strict, http)
    assert report.retrying == 1
    assert receiver.requests == []
    (d,) = await _deliveries(client, tf, "legal", hook["id"])
    assert "https" in d["last_error"] or "private" in d["last_error"]


async def test_rotated_secret_signs_alongside_the_previous_one_during_the_grace(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    hook = await _subscribe(client, tf, "legal", receiver.url, ["referral.received"])
    r = await client.post(
        f"/v1/webhooks/{hook['id']}/rotate-secret", headers=await tf.headers("legal")
    )
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["secret"] != hook["secret"]
    assert rotated["secret"].startswith("whsec_")
    assert rotated["previous_secret_expires_at"] is not None
    await _send(client, tf, {"full_name": {"legal": "service_provision"}})
    await _dispatch(app, http)
    (req,) = receiver.requests
    assert len(req.headers["webhook-signature"].split(" ")) == 2
    verify_webhook(rotated["secret"], req.headers, req.body)
    verify_webhook(hook["secret"], req.headers, req.body)
    listed = (await client.get("/v1/webhooks", headers=await tf.headers("legal"))).json()
    assert listed["items"][0]["secret_rotated_at"] is not None


async def _stored_secrets(app: Any, webhook_id: str) -> tuple[str, str | None]:
    async with app.state.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT secret, previous_secret FROM webhook WHERE id = :id"),
                {"id": webhook_id},
            )
        ).one()
    return row[0], row[1]


async def test_signing_secrets_are_sealed_at_rest(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    """The database holds each secret sealed under the server's webhook key, bound to
    its webhook: a dump does not give it away, and a sealed secret moved to another
    webhook does not open (that delivery fails instead of going out unsigned)."""
    hook = await _subscribe(client, tf, "legal", receiver.url + "/legal", ["referral.received"])
    other = await _subscribe(client, tf, "shelter", receiver.url + "/shelter", ["grant.added"])
    rotated = (
        await client.post(
            f"/v1/webhooks/{hook['id']}/rotate-secret", headers=await tf.headers("legal")
        )
    ).json()
    stored, previous = await _stored_secrets(app, hook["id"])
    assert previous is not None
    for value in (stored, previous):
        assert value.startswith(webhooks.SEALED_PREFIX)
        for secret in (hook["secret"], rotated["secret"]):
            assert secret.removeprefix("whsec_") not in value
    assert webhooks.open_secret(app.state.settings, hook["id"], stored) == rotated["secret"]
    assert webhooks.open_secret(app.state.settings, hook["id"], previous) == hook["secret"]

    # a sealed secret copied to another webhook's row does not open there
    other_stored = (await _stored_secrets(app, other["id"]))[0]
    async with app.state.engine.begin() as conn:
        await conn.execute(
            text("UPDATE webhook SET secret = :s, previous_secret = NULL WHERE id = :id"),
            {"s": other_stored, "id": hook["id"]},
        )
    await _send(client, tf, {"full_name": {"legal": "service_provision"}})
    report = await _dispatch(app, http)
    assert (report.claimed, report.delivered) == (1, 0)
    assert receiver.requests == []
    (delivery,) = await _deliveries(client, tf, "legal", hook["id"])
    assert delivery["last_error"] == "the signing secret does not open"


async def test_a_secret_in_clear_in_the_database_never_signs(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    """Every stored secret is sealed; a clear one (written behind the server's back) is
    refused like one that does not open, and the delivery is not sent unsigned."""
    hook = await _subscribe(client, tf, "legal", receiver.url, ["referral.received"])
    async with app.state.engine.begin() as conn:
        await conn.execute(
            text("UPDATE webhook SET secret = :s WHERE id = :id"),
            {"s": hook["secret"], "id": hook["id"]},
        )
    await _send(client, tf, {"full_name": {"legal": "service_provision"}})
    report = await _dispatch(app, http)
    assert (report.claimed, report.delivered) == (1, 0)
    assert receiver.requests == []
    (delivery,) = await _deliveries(client, tf, "legal", hook["id"])
    assert delivery["last_error"] == "the signing secret does not open"


async def test_deliveries_are_paginated_newest_first(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, receiver: Receiver
) -> None:
    hook = await _subscribe(client, tf, "legal", receiver.url, ["referral.received"])
    for _ in range(3):
        await _send(client, tf, {"full_name": {"legal": "service_provision"}})
    headers = await tf.headers("legal")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get(
                f"/v1/webhooks/{hook['id']}/deliveries", params=params, headers=headers
            )
        ).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 3
    r = await client.get(
        f"/v1/webhooks/{hook['id']}/deliveries", params={"status": "dead"}, headers=headers
    )
    assert r.json()["items"] == []


# ---------------------------------------------------------------- CLI listener


async def test_webhook_listen_verifies_and_prints_each_delivery(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, http: httpx.AsyncClient
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    out = io.StringIO()
    # The secret is only known after subscribing: subscribe first, then listen.
    hook = await _subscribe(
        client, tf, "legal", f"http://127.0.0.1:{port}/hooks", ["referral.received"]
    )
    server = webhook_listen.build_server(port, hook["secret"], out)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.02)
        body = await _send(client, tf, {"full_name": {"legal": "service_provision"}})
        assert (await _dispatch(app, http)).delivered == 1
        async with httpx.AsyncClient() as raw:
            r = await raw.post(
                f"http://127.0.0.1:{port}/hooks",
                content=b"{}",
                headers={
                    "webhook-id": "msg_forged",
                    "webhook-timestamp": str(int(datetime.now(UTC).timestamp())),
                    "webhook-signature": "v1,AAAA",
                },
            )
            assert r.status_code == 400
    finally:
        server.should_exit = True
        await task
        sock.close()
    lines = out.getvalue().splitlines()
    ok = lines[0].split(" ", 3)
    assert ok[0] == "OK"
    assert ok[1].startswith("msg_")
    assert ok[2] == "referral.received"
    assert json.loads(ok[3])["referral_id"] == body["manifest"]["referral_id"]
    assert lines[1].startswith("FAIL msg_forged")


async def test_a_law_enforcement_sender_hears_of_its_own_referrals_status(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    """The law-enforcement rule (an active grant needed) is about referrals an agency
    receives; a law-enforcement sender hears of its referral's status like any sender
    (its own grants, which let it open what it sent, are active)."""
    hook = await _subscribe(client, tf, "police", receiver.url + "/police")
    consent = {"full_name": {"legal": "service_provision"}}
    body = tf.seal("police", {"full_name": "secret full_name"}, consent)
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("police"))
    assert r.status_code == 201, r.text
    rid = body["manifest"]["referral_id"]
    r = await _post_status(client, tf, "legal", rid, "accepted", "caseworker")
    assert r.status_code == 200, r.text
    await _dispatch(app, http)
    (delivery,) = [q for q in receiver.requests if q.path == "/police"]
    payload = verify_webhook(hook["secret"], delivery.headers, delivery.body)
    assert payload["type"] == "referral.status_changed"
    assert payload["data"]["status"] == "accepted"
    assert payload["data"]["recipient"] == tf["legal"].agency_id
