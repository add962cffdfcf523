"""The SDK against the in-process app, on SQLite and PostgreSQL.

Lies of a dishonest server are played by a transport that wraps the real app
and rewrites its answers (mocking the network, not our own code).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client.keyfile import KeyFile, KeyFileError, PassphraseRequired, is_sealed, update_settings
from app.client.sdk import (
    KeyTransparencyError,
    LogConsistencyError,
    ReferralRequest,
    RefgateClient,
    RefgateError,
    Status,
    VerificationError,
)
from app.crypto import keys
from app.crypto.checkpoint import open_checkpoint, sign_checkpoint, verifier_key
from app.crypto.encoding import b64url_decode, b64url_encode
from app.crypto.passphrase import (
    MEMLIMIT_INTERACTIVE,
    OPSLIMIT_INTERACTIVE,
    PassphraseError,
    open_with_passphrase,
    seal_with_passphrase,
)
from tests.taskforce import TaskForce

FAST = {"opslimit": OPSLIMIT_INTERACTIVE, "memlimit": MEMLIMIT_INTERACTIVE}
Rewrite = Callable[[httpx.Request, httpx.Response], Awaitable[httpx.Response | None]]


class Lying(httpx.AsyncBaseTransport):
    """Forwards to the real app; ``rewrite`` may replace an answer. Records every request."""

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


def json_response(original: httpx.Response, body: Any) -> httpx.Response:
    return httpx.Response(original.status_code, json=body,
                          headers={"content-type": original.headers["content-type"]})


def key_file(tf: TaskForce, name: str, role: str = "caseworker") -> KeyFile:
    m = tf[name]
    client_id, auth = m.clients[role]
    return KeyFile(enc_private=m.keys.enc_private, sig_seed=m.keys.sig_seed, auth_seed=auth.seed,
                   agency_id=m.agency_id, client_id=client_id, role=role)


MakeSdk = Callable[..., RefgateClient]


@pytest.fixture
async def sdk(app: Any, tf: TaskForce) -> AsyncIterator[MakeSdk]:
    made: list[RefgateClient] = []

    def make(name: str, role: str = "caseworker", **kwargs: Any) -> RefgateClient:
        kwargs.setdefault("transport", httpx.ASGITransport(app=app))
        kwargs.setdefault("key_proof_timeout", 3.0)
        client = RefgateClient(key_file(tf, name, role), base_url="http://test", **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


def log_key_of(app: Any) -> str:
    return verifier_key(app.state.settings.audit.log_origin, app.state.server_keys.log_public)


CONSENT = {
    "full_name": {"legal": "service_provision", "police": "investigation"},
    "narrative": {"legal": "service_provision"},
}
FIELDS = {"full_name": "Maria Example", "narrative": "She was recruited with a false job offer."}
REQUEST = {"services": ["legal"], "urgency": "urgent", "case_ref": "c-1"}


def consent_ids(tf: TaskForce, consent: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {f: {tf[r].agency_id: p for r, p in per.items()} for f, per in consent.items()}


async def send(tf: TaskForce, shelter: RefgateClient, consent: dict[str, dict[str, str]] = CONSENT,
               recipients: tuple[str, ...] = ("legal", "police")) -> str:
    sent = await shelter.send_referral(
        FIELDS, consent_ids(tf, consent), {tf[r].agency_id: REQUEST for r in recipients}
    )
    return str(sent["referral_id"])


async def test_sdk_round_trip_shows_each_agency_only_its_consented_fields(
    app: Any, tf: TaskForce, sdk: MakeSdk
) -> None:
    await tf.sequence()
    shelter = sdk("shelter", log_key=log_key_of(app))
    rid = await send(tf, shelter)

    legal = await sdk("legal").open_referral(rid)
    assert legal.fields == FIELDS
    assert legal.sender_agency == tf["shelter"].agency_id
    assert {r: q.to_json() for r, q in legal.requests.items()} == {
        tf["legal"].agency_id: {"recipient": tf["legal"].agency_id, **REQUEST}}
    assert legal.requests[tf["legal"].agency_id] == ReferralRequest(
        recipient=tf["legal"].agency_id, services=tuple(REQUEST["services"]),
        urgency=REQUEST["urgency"], case_ref=REQUEST["case_ref"])

    police = sdk("police", "liaison")
    assert (await police.open_referral(rid)).fields == {"full_name": "Maria Example"}
    inbox = await police.inbox()
    assert [i.referral_id for i in inbox.items] == [rid]
    assert inbox.next_cursor is None
    assert (await police.inbox(status="accepted")).items == []

    sent = await shelter.sent()
    assert {s.recipient: s.status for s in sent.items[0].statuses} == {
        tf["legal"].agency_id: "requested", tf["police"].agency_id: "requested"
    }
    assert (await shelter.open_referral(rid)).fields == FIELDS  # the sender holds every field


async def test_send_refuses_a_key_that_is_not_yet_in_a_checkpoint(
    tf: TaskForce, sdk: MakeSdk
) -> None:
    shelter = sdk("shelter", key_proof_timeout=0.3)
    with pytest.raises(KeyTransparencyError, match="no key transparency proof"):
        await send(tf, shelter)
    assert (await sdk("shelter", verify_keys=False).sent()).items == []


def _swap_enc_key(agency_id: str, public: bytes, *, keep_kid: bool) -> Rewrite:
    async def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.method == "GET" and request.url.path == f"/v1/agencies/{agency_id}":
            body = response.json()
            for k in body["keys"]:
                if k["use"] == "enc":
                    k["public_key"] = b64url_encode(public)
                    if not keep_kid:
                        k["kid"] = keys.kid(public)
            return json_response(response, body)
        return None

    return rewrite


@pytest.mark.parametrize("lie", ["new-kid", "same-kid", "borrowed-proof", "forged-checkpoint"])
async def test_key_transparency_catches_a_directory_that_swaps_a_key(
    app: Any, tf: TaskForce, sdk: MakeSdk, lie: str
) -> None:
    await tf.sequence()
    legal_id = tf["legal"].agency_id
    evil = keys.generate_agency_keys()
    swap = _swap_enc_key(legal_id, evil.enc_public, keep_kid=lie == "same-kid")

    async def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if lie == "borrowed-proof" and request.url.path == f"/v1/agencies/{legal_id}/keys/proof":
            # the server answers for legal aid with another agency's (valid) leaf and proof
            other = f"/v1/agencies/{tf['police'].agency_id}/keys/proof"
            genuine = await transport.inner.handle_async_request(
                httpx.Request("GET", f"http://test{other}", params=request.url.params,
                              headers=request.headers)
            )
            await genuine.aread()
            return genuine
        if lie == "forged-checkpoint" and request.url.path == "/v1/audit/checkpoint":
            origin, size, _root, *rest = response.text.split("\n")
            forged = sign_checkpoint(origin, int(size), b"\x07" * 32, evil.sig_seed)
            return httpx.Response(200, text=forged)
        if lie == "forged-checkpoint":
            return None  # a genuine directory, a checkpoint signed by another key
        return await swap(request, response)

    transport = Lying(app, rewrite)
    shelter = sdk("shelter", transport=transport, log_key=log_key_of(app), key_proof_timeout=0.3)
    expected = {"new-kid": "the audit log .* states", "same-kid": "does not hash to it",
                "borrowed-proof": "leaf served is agency",
                "forged-checkpoint": "does not verify with the pinned log key"}[lie]
    with pytest.raises(VerificationError, match=expected):
        await send(tf, shelter)
    assert ("POST", "/v1/referrals") not in transport.requests


async def test_key_transparency_detects_a_forked_log(
    app: Any, tf: TaskForce, sdk: MakeSdk
) -> None:
    await tf.sequence()
    seed = app.state.server_keys.log_seed
    served = {"count": 0}

    async def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.url.path == "/v1/audit/checkpoint" and response.status_code == 200:
            served["count"] += 1
            if served["count"] == 2:  # same size, another root, validly signed: a fork
                cp = open_checkpoint(response.text, log_key_of(app))
                return httpx.Response(200, text=sign_checkpoint(
                    cp.origin, cp.size, b"\x01" * 32, seed, extensions=cp.extensions))
        return None

    shelter = sdk("shelter", transport=Lying(app, rewrite), log_key=log_key_of(app))
    await shelter.verified_checkpoint()
    with pytest.raises(LogConsistencyError, match="different roots"):
        await shelter.verified_checkpoint()


async def test_checkpoints_seen_later_must_extend_earlier_ones(
    app: Any, tf: TaskForce, sdk: MakeSdk
) -> None:
    await tf.sequence()
    auditor = sdk("office", "auditor")  # trusts the server's log key on first use
    first = await auditor.verified_checkpoint()
    await tf.sequence()
    second = await auditor.verified_checkpoint()  # checked with a consistency proof
    assert second.size > first.size
    assert await auditor.trusted_log_key() == log_key_of(app)


@pytest.mark.parametrize("part", ["ciphertext", "disclosure", "wrapped_key"])
async def test_open_referral_refuses_a_tampered_envelope(
    app: Any, tf: TaskForce, sdk: MakeSdk, part: str
) -> None:
    await tf.sequence()
    rid = await send(tf, sdk("shelter"))

    async def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.method != "GET" or request.url.path != f"/v1/referrals/{rid}":
            return None
        body = response.json()
        if part == "ciphertext":
            fid = sorted(body["ciphertexts"])[0]
            blob = bytearray(b64url_decode(body["ciphertexts"][fid]))
            blob[30] ^= 1
            body["ciphertexts"][fid] = b64url_encode(bytes(blob))
        elif part == "disclosure":  # the request re-encoded with another urgency
            request = next(d for d in body["disclosures"]
                           if json.loads(b64url_decode(d))[1] == "request")
            salt, kind, value = json.loads(b64url_decode(request))
            value["urgency"] = "routine"
            body["disclosures"].remove(request)
            body["disclosures"].append(
                b64url_encode(json.dumps([salt, kind, value]).encode()))
        else:
            other = keys.seal(tf["legal"].keys.enc_public, b"\x00" * 32)
            body["wrapped_keys"][0]["wrapped_key"] = b64url_encode(other)
        return json_response(response, body)

    legal = sdk("legal", transport=Lying(app, rewrite))
    with pytest.raises(VerificationError, match="does not verify"):
        await legal.open_referral(rid)


async def test_status_note_is_readable_by_the_sender_only(
    tf: TaskForce, sdk: MakeSdk
) -> None:
    await tf.sequence()
    shelter = sdk("shelter")
    rid = await send(tf, shelter)
    legal = sdk("legal")
    status = await legal.update_status(rid, "accepted", note="Intake Tuesday 10:00, room 4")
    assert isinstance(status, Status)
    assert status.status == "accepted"
    assert status.note is not None
    assert "Intake" not in status.note
    with pytest.raises(VerificationError):
        legal.read_note(status.note)  # sealed to the sender, not to the recipient

    opened = await shelter.open_referral(rid)
    assert opened.notes == {tf["legal"].agency_id: "Intake Tuesday 10:00, room 4"}
    assert opened.unreadable_notes == ()
    statuses = {s.recipient: s.status for s in opened.statuses}
    assert statuses[tf["legal"].agency_id] == "accepted"

    with pytest.raises(RefgateError) as refused:
        await legal.update_status(rid, "received")  # no way back from accepted
    assert refused.value.status == 409
    assert "cannot become" in refused.value.detail


async def test_grant_then_revoke_through_the_sdk(tf: TaskForce, sdk: MakeSdk) -> None:
    await tf.sequence()
    shelter = sdk("shelter")
    rid = await send(tf, shelter, {"full_name": {"legal": "service_provision"}},
                     recipients=("legal",))
    police = sdk("police", "liaison")
    with pytest.raises(RefgateError) as missing:
        await police.open_referral(rid)
    assert missing.value.status == 404

    changed = await shelter.grant(
        rid, consent_ids(tf, {"narrative": {"legal": "service_provision"},
                              "full_name": {"police": "investigation"}}),
        {tf["police"].agency_id: {"services": ["investigation"], "urgency": "routine"}},
        expires_in_days=30,
    )
    assert changed["version"] == 2
    assert changed["new_recipients"] == [tf["police"].agency_id]
    assert (await sdk("legal").open_referral(rid)).fields == FIELDS
    assert (await police.open_referral(rid)).fields == {"full_name": "Maria Example"}

    await shelter.revoke(rid, [("full_name", tf["police"].agency_id)])
    with pytest.raises(RefgateError) as revoked:
        await police.open_referral(rid)
    assert revoked.value.status == 404
    assert revoked.value.problem["title"] == "Not Found"

    statuses = await shelter.withdraw(rid)
    assert {s.status for s in statuses} == {"cancelled"}


async def test_grant_refuses_a_referral_the_server_altered(
    app: Any, tf: TaskForce, sdk: MakeSdk
) -> None:
    await tf.sequence()
    rid = await send(tf, sdk("shelter"))

    async def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if request.method == "GET" and request.url.path == f"/v1/referrals/{rid}":
            body = response.json()
            body["manifest"]["digests"][0] = b64url_encode(b"\x05" * 32)
            return json_response(response, body)
        return None

    transport = Lying(app, rewrite)
    shelter = sdk("shelter", transport=transport)
    with pytest.raises(VerificationError):
        await shelter.grant(rid, consent_ids(tf, {"narrative": {"police": "investigation"}}))
    assert ("POST", f"/v1/referrals/{rid}/grants") not in transport.requests


async def test_a_status_rewritten_in_the_database_is_refused_by_the_sender(
    app: Any, tf: TaskForce, sdk: MakeSdk
) -> None:
    await tf.sequence()
    shelter = sdk("shelter")
    rid = await send(tf, shelter)
    await sdk("legal").update_status(rid, "accepted", note="Intake Monday 10:00")
    opened = await shelter.open_referral(rid)
    assert [s.verified for s in opened.statuses if s.status == "accepted"] == [True]
    forged_note = b64url_encode(keys.seal(tf["shelter"].keys.enc_public, b"Do not come"))
    from sqlalchemy import text

    for change in ("status = 'rejected', reason = 'no_capacity'", f"note = '{forged_note}'"):
        async with app.state.sessionmaker() as db, db.begin():
            await db.execute(text(
                f"UPDATE referral_recipient SET {change} "  # noqa: S608 (test constants)
                "WHERE referral_id = :rid AND recipient = :r"
            ), {"rid": rid, "r": tf["legal"].agency_id})
        with pytest.raises(VerificationError, match="signature does not verify"):
            await shelter.open_referral(rid)


async def test_send_refuses_locally_what_the_server_would_refuse(
    tf: TaskForce, sdk: MakeSdk
) -> None:
    transport = Lying(tf.app)
    shelter = sdk("shelter", transport=transport, verify_keys=False)
    legal, police = tf["legal"].agency_id, tf["police"].agency_id
    one = {"full_name": {legal: "service_provision"}}
    with pytest.raises(ValueError, match="no consented field"):
        await shelter.send_referral(FIELDS, one, {legal: REQUEST, police: REQUEST})
    with pytest.raises(ValueError, match="180 days"):
        await shelter.send_referral(FIELDS, one, {legal: REQUEST}, expires_in_days=400)
    with pytest.raises(ValueError, match="unknown service 'tvisa'"):
        await shelter.send_referral(FIELDS, one, {legal: {**REQUEST, "services": ["tvisa"]}})
    with pytest.raises(ValueError, match="not a recipient"):
        await shelter.send_referral(FIELDS, {"full_name": {legal: "service_provision",
                                                           police: "investigation"}},
                                    {legal: REQUEST})
    assert ("POST", "/v1/referrals") not in transport.requests


async def test_token_is_refreshed_when_it_expires_or_is_refused(
    app: Any, tf: TaskForce, sdk: MakeSdk
) -> None:
    transport = Lying(app)
    legal = sdk("legal", transport=transport, verify_keys=False)

    def token_posts() -> int:
        return transport.requests.count(("POST", "/oauth/token"))

    await asyncio.gather(*(legal.inbox() for _ in range(5)))  # concurrent: one token fetch
    await legal.inbox()
    assert token_posts() == 1
    legal._auth._refresh_at = 0.0  # as if it were about to expire
    await legal.inbox()
    assert token_posts() == 2
    legal._auth._token = "not-a-token"  # the server refuses it: 401 invalid_token
    legal._auth._refresh_at = float("inf")
    assert (await legal.inbox()).items == []
    assert token_posts() == 3
    assert (await legal.access_token()) == legal._auth._token


async def test_a_refused_client_gets_the_oauth_problem(app: Any, tf: TaskForce) -> None:
    stranger = KeyFile.generate(agency_id=tf["legal"].agency_id, client_id="no-such-client")
    async with RefgateClient(stranger, base_url="http://test",
                             transport=httpx.ASGITransport(app=app)) as client:
        with pytest.raises(RefgateError) as refused:
            await client.inbox()
    assert refused.value.status in (400, 401)
    assert refused.value.problem.get("error") == "invalid_client"


async def test_auditor_reads_checkpoints_proofs_events_and_exports(
    app: Any, tf: TaskForce, sdk: MakeSdk
) -> None:
    await tf.sequence()
    auditor = sdk("office", "auditor", log_key=log_key_of(app))
    cp = open_checkpoint(await auditor.checkpoint(), await auditor.log_key())
    assert cp.size > 2
    assert (await auditor.inclusion_proof(1, cp.size))["tree_size"] == cp.size
    assert (await auditor.consistency_proof(1, cp.size))["second"] == cp.size
    assert (await auditor.audit_event(0))["seq"] == 0
    page = await auditor.audit_events(action="key:register", limit=2)
    assert len(page.items) == 2
    assert page.next_cursor is not None
    chunks = [c async for c in auditor.export("ndjson", action="agency:create")]
    lines = b"".join(chunks).decode().splitlines()
    assert len(lines) == len(tf.members)
    assert all(json.loads(line)["event"]["action"] == "agency:create" for line in lines)
    agencies = await auditor.agencies()
    assert {a.id for a in agencies} >= {m.agency_id for m in tf.members.values()}
    # every client pins and verifies checkpoints, admins too; the events stay auditors'
    admin = sdk("office", "admin")
    assert (await admin.verified_checkpoint()).size >= cp.size
    with pytest.raises(RefgateError) as denied:
        await admin.audit_events()
    assert denied.value.status == 403


# ---------------------------------------------------------------- key files (no database)


def test_key_file_is_written_0600_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "agency.key.json"
    kf = KeyFile.generate(server="http://localhost:8000")
    kf.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        KeyFile.generate().save(path)
    loaded = KeyFile.load(path)
    assert loaded == kf
    assert loaded.public_keys().enc_key == b64url_encode(kf.enc_public)
    assert "enc_private" not in repr(loaded)
    assert "seed" not in repr(loaded)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    KeyFile.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        KeyFile.load(path)


def test_key_file_written_by_the_demo_seeder_loads(tmp_path: Path) -> None:
    agency, auth = keys.generate_agency_keys(), keys.generate_signing_key()
    path = tmp_path / "demo.key.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"v": 1, "server": "http://127.0.0.1:8000", "agency_id": "a", "client_id": "c",
                   "role": "caseworker", "enc_private": b64url_encode(agency.enc_private),
                   "sig_seed": b64url_encode(agency.sig_seed),
                   "auth_seed": b64url_encode(auth.seed)}, fh)
    kf = KeyFile.load(path)
    assert kf.agency_keys.enc_public == agency.enc_public
    assert kf.public_keys().auth_key == b64url_encode(auth.public)
    assert (kf.agency_id, kf.client_id, kf.role) == ("a", "c", "caseworker")


def test_passphrase_sealed_key_file_opens_only_with_its_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "sealed.key.json"
    kf = KeyFile.generate(server="https://refgate.example")
    kf.save(path, passphrase=b"correct horse", **FAST)
    data = json.loads(path.read_text())
    assert set(data) == {"v", "server", "agency_id", "client_id", "role", "sealed"}
    assert data["sealed"]["kdf"] == "argon2id"
    assert is_sealed(path)
    with pytest.raises(PassphraseRequired):
        KeyFile.load(path)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        KeyFile.load(path, b"wrong horse")
    assert KeyFile.load(path, b"correct horse") == kf

    update_settings(path, agency_id="agency-1", client_id="client-1")  # no passphrase needed
    reloaded = KeyFile.load(path, b"correct horse")
    assert (reloaded.agency_id, reloaded.client_id) == ("agency-1", "client-1")
    assert reloaded.enc_private == kf.enc_private
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_passphrase_box_refuses_tampering_and_weak_parameters() -> None:
    sealed = seal_with_passphrase(b"secret", b"pw", **FAST)
    assert open_with_passphrase(sealed, b"pw") == b"secret"
    with pytest.raises(PassphraseError):
        open_with_passphrase({**sealed, "salt": b64url_encode(b"\x00" * 16)}, b"pw")
    with pytest.raises(PassphraseError, match="opslimit"):
        open_with_passphrase({**sealed, "opslimit": 1}, b"pw")
    with pytest.raises(PassphraseError, match="memlimit"):
        open_with_passphrase({**sealed, "memlimit": 2**40}, b"pw")
    with pytest.raises(PassphraseError, match="kdf"):
        open_with_passphrase({**sealed, "kdf": "scrypt"}, b"pw")
    with pytest.raises(PassphraseError, match="non-empty"):
        seal_with_passphrase(b"secret", b"")
