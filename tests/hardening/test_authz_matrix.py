"""Authorization matrix: every route × every kind of caller × own and others' resources.

The route list comes from the app itself (its OpenAPI paths plus the routes left
out of the document), so a new route without an entry in ``ROUTES`` fails
``test_every_route_has_a_matrix_entry``. Each cell states the expected status
and whether it is a denial; the test then checks, for every cell:

- the status, and problem+json on every error;
- no body shows a ciphertext, a wrapped key, a disclosure (field, grant or
  request), a webhook secret or the id of a referral to a caller the design
  does not allow (sender and consented recipients only, each recipient only its
  own request and grants; a law-enforcement recipient only while it holds a grant),
  nor an audit record (auditors see all; caseworkers and liaisons the events
  of their own agency; key registrations are public by design: key transparency);
- every denial left an ``outcome = denied`` audit event carrying the cell's
  request id.

Callers: anonymous, an expired token, a suspended agency's token, each role of
the sending agency (shelter: caseworker, liaison, auditor, admin), a recipient
(legal aid), a law-enforcement recipient (police liaison and caseworker; it
holds consent on referral A; on B its only grant was revoked), an unrelated
agency (NGO), and the task force's auditor and admin (government). Resources: referrals A and B
(sent by the shelter), C (sent by legal aid to the shelter), D (NGO to legal
aid) and a missing id; own and another agency's directory entry, key, audit
event, webhook and directory service (an agency's services are written by its own
caseworkers and admins only: another agency's caller gets 403). A mutation
expected to succeed runs on a fresh copy, so the cells do not depend on each
other's order.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.client.assertion import client_assertion, token_form
from app.config import MetricsSettings, Settings
from app.crypto import envelope as env
from app.crypto import keys
from app.crypto.encoding import b64url_encode
from app.crypto.wire import FieldValue, GrantValue
from app.identity import ROLE_SCOPES, Role, Scope
from app.models.directory_schemas import ServiceIn
from app.models.tables import ApiClient
from app.models.webhook_tables import WebhookDelivery
from app.services import agencies, directory
from app.tokens import issue_access_token
from tests.directory import service as service_body
from tests.hardening import PROBLEM_JSON, quiet_settings
from tests.taskforce import SYSTEM, TaskForce, rfc3339

TOKEN_URL = "http://test/oauth/token"
METRICS_TOKEN = "m" * 32


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return quiet_settings(database_url, tmp_path, metrics=MetricsSettings(token=METRICS_TOKEN))


# ------------------------------------------------------------------ callers


@dataclass(frozen=True)
class Caller:
    key: str
    member: str | None
    role: str | None
    auth: str = "valid"  # valid | none | expired | suspended

    @property
    def scopes(self) -> frozenset[str]:
        if self.auth != "valid" or self.role is None:
            return frozenset()
        return frozenset(str(s) for s in ROLE_SCOPES[Role(self.role)])


CALLERS = (
    Caller("anonymous", None, None, "none"),
    Caller("expired", "shelter", "caseworker", "expired"),
    Caller("suspended", "suspended", "caseworker", "suspended"),
    Caller("shelter:caseworker", "shelter", "caseworker"),
    Caller("shelter:liaison", "shelter", "liaison"),
    Caller("shelter:auditor", "shelter", "auditor"),
    Caller("shelter:admin", "shelter", "admin"),
    Caller("legal:caseworker", "legal", "caseworker"),
    Caller("police:liaison", "police", "liaison"),
    Caller("police:caseworker", "police", "caseworker"),
    Caller("ngo:caseworker", "ngo", "caseworker"),
    Caller("office:auditor", "office", "auditor"),
    Caller("office:admin", "office", "admin"),
)
KIND = {
    "shelter": "shelter",
    "legal": "legal_aid",
    "police": "law_enforcement",
    "ngo": "ngo",
    "office": "government",
    "suspended": "medical",
}

# ------------------------------------------------------------------ referrals (the model)

SP, INV = "service_provision", "investigation"
SHAPES: dict[str, dict[str, Any]] = {
    # sender, recipients, consent {field: {recipient: purpose}}, grant added by POST /grants,
    # revocation of the cell, and consent revoked right after creation ("revoked")
    "A": {
        "sender": "shelter",
        "recipients": ["legal", "police"],
        "consent": {"full_name": {"legal": SP, "police": INV}, "narrative": {"legal": SP}},
        "widen": ("narrative", "police", INV),
        "revoke": ("full_name", "legal"),
    },
    "B": {
        "sender": "shelter",
        "recipients": ["legal", "police"],
        # v2 refuses a recipient without a grant: police gets one, revoked at once
        "consent": {"full_name": {"legal": SP, "police": INV}},
        "revoked": ("full_name", "police"),
        "widen": ("full_name", "police", INV),
        "revoke": ("full_name", "legal"),
    },
    "C": {
        "sender": "legal",
        "recipients": ["shelter"],
        "consent": {"full_name": {"shelter": SP}},
        "widen": ("full_name", "ngo", SP),
        "revoke": ("full_name", "shelter"),
    },
    "D": {
        "sender": "ngo",
        "recipients": ["legal"],
        "consent": {"full_name": {"legal": SP}},
        "widen": ("full_name", "shelter", SP),
        "revoke": ("full_name", "legal"),
    },
}
REFERRAL_RESOURCES = ("A", "B", "C", "D", "missing")


@dataclass
class Referral:
    shape: str
    id: str
    body: dict[str, Any]
    sender: str
    recipients: set[str]
    grants: dict[str, set[str]]  # recipient member -> consented fields
    fids: dict[str, str] = field(default_factory=dict)  # field name -> fid
    notified: set[str] = field(default_factory=set)  # members sent referral.received

    def field_of(self, fid: str) -> str:
        return next(name for name, f in self.fids.items() if f == fid)

    def visible_to(self, member: str | None) -> bool:
        if member is None:
            return False
        if member == self.sender:
            return True
        if member not in self.recipients:
            return False
        return KIND[member] != "law_enforcement" or bool(self.grants.get(member))

    def may_read_field(self, member: str, name: str) -> bool:
        return member == self.sender or name in self.grants.get(member, set())


@dataclass(frozen=True)
class Expect:
    status: int
    denial: bool = False


@dataclass
class Req:
    path: str
    json: Any = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    after: Callable[[httpx.Response], Awaitable[None]] | None = None


# ------------------------------------------------------------------ the world the cells run in


class World:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient, tf: TaskForce) -> None:
        self.app = app
        self.http = client
        self.tf = tf
        self.referrals: dict[str, Referral] = {}
        self.all_referrals: list[Referral] = []
        self.tokens: dict[str, str] = {}
        self.webhooks: dict[str, str] = {}  # member -> webhook id
        self.dead: dict[str, str] = {}  # member -> dead delivery id of its webhook
        self.secrets: dict[str, str] = {}  # webhook secret -> owning member
        self.spare = ""  # agency id of a throwaway agency ("another agency" for admin routes)
        self.services: dict[str, str] = {}  # member -> id of a directory service of its agency

    # -- setup

    async def setup(self) -> None:
        tf = self.tf
        shelter = tf["shelter"]
        async with self.app.state.sessionmaker() as db, db.begin():
            for role in ("auditor", "admin"):
                auth = keys.generate_signing_key()
                c = await agencies.create_client(
                    db, SYSTEM, shelter.agency_id, role=role, auth_key=b64url_encode(auth.public)
                )
                shelter.clients[role] = (c.client_id, auth)
        await tf.add("suspended", "medical", ["caseworker"])
        spare_keys = keys.generate_agency_keys()
        async with self.app.state.sessionmaker() as db, db.begin():
            spare = await agencies.create(
                db,
                SYSTEM,
                name="spare agency",
                kind="ngo",
                enc_key=b64url_encode(spare_keys.enc_public),
                sign_key=b64url_encode(spare_keys.sig_public),
            )
        self.spare = spare.id
        for caller in CALLERS:
            if caller.auth in ("valid", "suspended"):
                assert caller.member
                assert caller.role
                self.tokens[caller.key] = await tf.token(caller.member, caller.role)
        cw_id = shelter.clients["caseworker"][0]
        expired, _ = issue_access_token(
            self.app.state.server_keys,
            issuer=self.app.state.issuer,
            client=ApiClient(client_id=cw_id, agency_id=shelter.agency_id, role="caseworker"),
            ttl=-120,
        )
        self.tokens["expired"] = expired
        async with self.app.state.sessionmaker() as db, db.begin():
            await agencies.set_status(db, SYSTEM, tf["suspended"].agency_id, "suspended")
        for shape in SHAPES:
            self.referrals[shape] = await self.new_referral(shape)
        for member in ("shelter", "legal", "police", "ngo"):
            self.webhooks[member] = await self.new_webhook(member)
            self.dead[member] = await self.new_dead_delivery(self.webhooks[member])
        for member in ("shelter", "legal", "police", "ngo", "office"):
            self.services[member] = await self.new_service(member)
        await tf.sequence()

    async def new_referral(self, shape: str) -> Referral:
        s = SHAPES[shape]
        sealed = self.tf.sealed(
            s["sender"],
            {f: f"{f} of person {shape}" for f in s["consent"]},
            s["consent"],
            requests={member: {} for member in s["recipients"]},
        )
        body = sealed.body
        headers = await self.tf.headers(s["sender"])
        r = await self.http.post("/v1/referrals", json=body, headers=headers)
        assert r.status_code == 201, r.text
        grants: dict[str, set[str]] = {}
        for f, per in s["consent"].items():
            for member in per:
                grants.setdefault(member, set()).add(f)
        rid = body["manifest"]["referral_id"]
        if "revoked" in s:
            name, member = s["revoked"]
            r = await self.http.post(
                f"/v1/referrals/{rid}/revocations",
                json={"revocations": [{"fid": sealed.fids[name],
                                       "recipient": self.agency_id(member)}]},
                headers=headers,
            )
            assert r.status_code == 200, r.text
            grants[member].discard(name)
        ref = Referral(
            shape, rid, body, s["sender"], set(s["recipients"]), grants, sealed.fids,
            notified=set(s["recipients"]),
        )
        self.all_referrals.append(ref)
        return ref

    async def new_webhook(self, member: str) -> str:
        r = await self.http.post(
            "/v1/webhooks",
            json={
                "url": f"https://hooks.example.org/{member}",
                "event_types": ["referral.received"],
            },
            headers=await self.tf.headers(member),
        )
        assert r.status_code == 201, r.text
        self.secrets[r.json()["secret"]] = member
        return str(r.json()["id"])

    async def new_service(self, member: str) -> str:
        async with self.app.state.sessionmaker() as db, db.begin():
            [row] = await directory.publish(
                db, SYSTEM, self.agency_id(member), [ServiceIn.model_validate(service_body())]
            )
        return str(row["id"])

    async def new_dead_delivery(self, webhook_id: str) -> str:
        delivery = f"msg_{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        async with self.app.state.sessionmaker() as db, db.begin():
            db.add(
                WebhookDelivery(
                    id=delivery,
                    webhook_id=webhook_id,
                    event_type="referral.received",
                    payload="{}",
                    status="dead",
                    attempts=12,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        return delivery

    def grant_update(self, ref: Referral) -> dict[str, Any]:
        field_name, member, purpose = SHAPES[ref.shape]["widen"]
        sender = self.tf[ref.sender]
        target = self.tf[member]
        grant = env.Grant(
            field=field_name,
            recipient=target.agency_id,
            enc_public=target.keys.enc_public,
            purpose=purpose,
            expires_at=rfc3339(datetime.now(UTC) + timedelta(days=10)),
        )
        new = member not in SHAPES[ref.shape]["recipients"]
        return env.amend(
            ref.body,  # as sent: version 1, which a fresh copy still is
            sender_agency=sender.agency_id,
            sender_sig_seed=sender.keys.sig_seed,
            sender_enc_private=sender.keys.enc_private,
            grants=[grant],
            requests=[env.Request(target.agency_id, ("legal",), "routine")] if new else [],
        )

    def status_update(self, c: Caller, ref: Referral | None) -> dict[str, Any]:
        """A status signed by the caller's agency, as its recipient (the server decides)."""
        member = self.tf[self.member_of(c)]
        return env.sign_status(
            referral_id=ref.id if ref else str(uuid.uuid4()),
            recipient=member.agency_id,
            status="received",
            reason=None,
            note=None,
            signed_at=rfc3339(datetime.now(UTC)),
            sig_seed=member.keys.sig_seed,
        )

    # -- helpers for cells

    def member_of(self, caller: Caller) -> str:
        """The agency a caller acts for; callers without one act on the shelter's behalf."""
        return caller.member or "shelter"

    def agency_id(self, member: str) -> str:
        return self.tf[member].agency_id

    async def seq_of(self, member: str, own: bool) -> int:
        agency = self.agency_id(member)
        where = (
            "(e.actor_agency = :a OR e.subject_agency = :a)"
            if own
            else "(e.actor_agency IS NULL OR e.actor_agency <> :a) "
            "AND (e.subject_agency IS NULL OR e.subject_agency <> :a)"
        )
        async with self.app.state.engine.connect() as conn:
            seq = (
                await conn.execute(
                    text(
                        "SELECT min(l.seq) FROM audit_leaf l JOIN audit_event e "  # noqa: S608 (fixed SQL)
                        f"ON e.id = l.event_id WHERE {where}"
                    ),
                    {"a": agency},
                )
            ).scalar_one()
        assert seq is not None
        return int(seq)


# ------------------------------------------------------------------ expectations


def _authn(c: Caller, scope: str | None) -> Expect | None:
    """401 for a missing, expired or suspended token; 403 for a role without the scope."""
    if c.auth != "valid":
        return Expect(401, denial=True)
    if scope is not None and scope not in c.scopes:
        return Expect(403, denial=True)
    return None


def _referral_item(
    scope: str, ok: int, *, sender_only: bool = False, recipient_only: bool = False
) -> Oracle:
    def expect(w: World, c: Caller, res: str) -> Expect:
        early = _authn(c, scope)
        if early:
            return early
        if res == "missing":
            return Expect(404, denial=True)
        ref = w.referrals[res]
        if not ref.visible_to(c.member):
            return Expect(404, denial=True)
        is_sender = c.member == ref.sender
        if (sender_only and not is_sender) or (recipient_only and is_sender):
            return Expect(403, denial=True)
        return Expect(ok)

    return expect


def _plain(scope: str | None, ok: int) -> Oracle:
    def expect(w: World, c: Caller, res: str) -> Expect:
        return _authn(c, scope) or Expect(ok)

    return expect


def _admin_on_agency(ok: int) -> Oracle:
    def expect(w: World, c: Caller, res: str) -> Expect:
        early = _authn(c, Scope.AGENCIES_ADMIN)
        if early:
            return early
        return Expect(404) if res == "missing" else Expect(ok)

    return expect


def _service_writer(ok: int) -> Oracle:
    """An agency's services: its own caseworkers and admins; another agency's caller 403;
    a missing agency or service 404."""

    def expect(w: World, c: Caller, res: str) -> Expect:
        early = _authn(c, Scope.SERVICES_WRITE)
        if early:
            return early
        if res == "own":
            return Expect(ok)
        return Expect(403 if res == "other" else 404, denial=True)

    return expect


def _directory_item(w: World, c: Caller, res: str) -> Expect:
    return _authn(c, Scope.AGENCIES_READ) or (Expect(404) if res == "missing" else Expect(200))


def _audit_reader(ok: int) -> Oracle:
    def expect(w: World, c: Caller, res: str) -> Expect:
        early = _authn(c, None)
        if early:
            return early
        if not c.scopes & {Scope.AUDIT_READ, Scope.AUDIT_OWN}:
            return Expect(403, denial=True)
        if res == "other" and Scope.AUDIT_READ not in c.scopes:
            return Expect(404, denial=True)
        return Expect(ok)

    return expect


def _webhook_item(ok: int) -> Oracle:
    def expect(w: World, c: Caller, res: str) -> Expect:
        early = _authn(c, Scope.WEBHOOKS_MANAGE)
        if early:
            return early
        return Expect(ok) if res == "own" else Expect(404, denial=True)

    return expect


def _create_referral(w: World, c: Caller, res: str) -> Expect:
    early = _authn(c, Scope.REFERRALS_SEND)
    if early:
        return early
    return Expect(201) if res == "own" else Expect(403, denial=True)


def _token(w: World, c: Caller, res: str) -> Expect:
    return Expect(200) if c.auth == "valid" else Expect(401, denial=True)


def _public(w: World, c: Caller, res: str) -> Expect:
    return Expect(200)


def _docs_page(w: World, c: Caller, res: str) -> Expect:
    from app.routers import console

    return Expect(200 if (console.DIST / "docs.html").is_file() else 503)  # built or not


def _console_page(w: World, c: Caller, res: str) -> Expect:
    from app.routers import console

    return Expect(200 if (console.DIST / "index.html").is_file() else 503)  # built or not


def _status(status: int) -> Oracle:
    def oracle(w: World, c: Caller, res: str) -> Expect:
        return Expect(status)

    return oracle


def _metrics(w: World, c: Caller, res: str) -> Expect:
    return Expect(401)  # no caller holds the metrics secret; not an audited resource


# ------------------------------------------------------------------ requests


async def _referral_req(w: World, c: Caller, res: str, fresh: bool, suffix: str) -> Req:
    if res == "missing":
        return Req(f"/v1/referrals/{uuid.uuid4()}{suffix}")
    ref = await w.new_referral(res) if fresh else w.referrals[res]
    return Req(f"/v1/referrals/{ref.id}{suffix}")


def _referral_route(
    suffix: str, body: Callable[[World, Caller, Referral | None], Any]
) -> Builder:
    async def build(w: World, c: Caller, res: str, fresh: bool) -> Req:
        req = await _referral_req(w, c, res, fresh, suffix)
        ref_id = req.path.split("/")[3]
        ref = next((r for r in w.all_referrals if r.id == ref_id), None)
        req.json = body(w, c, ref)
        return req

    return build


def _status_body(w: World, c: Caller, ref: Referral | None) -> Any:
    return w.status_update(c, ref)


def _grants_body(w: World, c: Caller, ref: Referral | None) -> Any:
    return w.grant_update(ref or w.referrals["A"])


def _revocation_body(w: World, c: Caller, ref: Referral | None) -> Any:
    ref = ref or w.referrals["A"]
    field_name, member = SHAPES[ref.shape]["revoke"]
    return {"revocations": [{"fid": ref.fids[field_name], "recipient": w.agency_id(member)}]}


async def _after_referral_mutation(w: World, path: str, r: httpx.Response) -> None:
    ref = next((x for x in w.all_referrals if x.id == path.split("/")[3]), None)
    if ref is None or r.status_code != 200:
        return
    if path.endswith("/grants"):
        field_name, member, _ = SHAPES[ref.shape]["widen"]
        ref.recipients.add(member)
        ref.grants.setdefault(member, set()).add(field_name)
    elif path.endswith("/revocations"):
        field_name, member = SHAPES[ref.shape]["revoke"]
        ref.grants.get(member, set()).discard(field_name)


async def _create_referral_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    own = w.member_of(c)
    if own not in ("shelter", "legal", "police", "ngo", "suspended"):
        own = "shelter"
    sender = own if res == "own" else ("legal" if own == "shelter" else "shelter")
    recipient = "legal" if sender != "legal" else "shelter"
    sealed = w.tf.sealed(
        sender, {"full_name": "Created In Matrix"}, {"full_name": {recipient: SP}}
    )
    body = sealed.body
    if res == "own" and c.auth == "valid" and Scope.REFERRALS_SEND in c.scopes:
        grants = {recipient: {"full_name"}}
        w.all_referrals.append(
            Referral(
                "new", body["manifest"]["referral_id"], body, sender, {recipient}, grants,
                sealed.fids,
            )
        )
    return Req("/v1/referrals", json=body)


async def _list_referrals_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    return Req(f"/v1/referrals?box={res}")


def _agency_target(w: World, c: Caller, res: str) -> str:
    if res == "missing":
        return str(uuid.uuid4())
    return w.agency_id(w.member_of(c)) if res == "own" else w.spare


async def _get_agency_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    return Req(f"/v1/agencies/{_agency_target(w, c, res)}")


async def _create_agency_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    k = keys.generate_agency_keys()
    return Req(
        "/v1/agencies",
        json={
            "name": f"matrix {uuid.uuid4().hex[:6]}",
            "kind": "ngo",
            "enc_key": b64url_encode(k.enc_public),
            "sign_key": b64url_encode(k.sig_public),
        },
    )


async def _create_client_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    auth = keys.generate_signing_key()
    return Req(
        f"/v1/agencies/{_agency_target(w, c, res)}/clients",
        json={"role": "caseworker", "auth_key": b64url_encode(auth.public)},
    )


async def _revoke_client_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    """Revoke a throwaway client of the target agency (never one a caller uses)."""
    target = _agency_target(w, c, res)
    client_id = str(uuid.uuid4())
    if res != "missing":
        auth = keys.generate_signing_key()
        async with w.app.state.sessionmaker() as db, db.begin():
            made = await agencies.create_client(
                db, SYSTEM, target, role="caseworker", auth_key=b64url_encode(auth.public)
            )
        client_id = made.client_id
    return Req(f"/v1/agencies/{target}/clients/{client_id}/revoke")


async def _rotate_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    target = _agency_target(w, c, res)
    k = keys.generate_agency_keys()
    member = w.member_of(c) if res == "own" else None

    async def after(r: httpx.Response) -> None:
        if r.status_code == 201 and member is not None:
            w.tf[member].keys = k  # later cells seal with the agency's current keys

    return Req(
        f"/v1/agencies/{target}/keys",
        json={"enc_key": b64url_encode(k.enc_public), "sign_key": b64url_encode(k.sig_public)},
        after=after,
    )


async def _suspend_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    target = _agency_target(w, c, res)

    async def after(r: httpx.Response) -> None:
        if r.status_code == 200 and res == "own":  # put the caller's own agency back
            async with w.app.state.sessionmaker() as db, db.begin():
                await agencies.set_status(db, SYSTEM, target, "active")

    return Req(f"/v1/agencies/{target}/suspend", after=after)


async def _reactivate_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    return Req(f"/v1/agencies/{_agency_target(w, c, res)}/reactivate")


async def _create_service_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    return Req(f"/v1/agencies/{_agency_target(w, c, res)}/services", json=service_body())


def _service_route(suffix: str, body: Any) -> Builder:
    """own: a service of the caller's agency (a fresh one when the cell mutates it);
    other: another agency's service under its agency; missing: no such service."""

    async def build(w: World, c: Caller, res: str, fresh: bool) -> Req:
        member = w.member_of(c) if w.member_of(c) in w.services else "shelter"
        if res == "other":
            member = "ngo" if member != "ngo" else "legal"
        service_id = w.services[member]
        if res == "missing":
            service_id = str(uuid.uuid4())
        elif fresh:
            service_id = await w.new_service(member)
        return Req(f"/v1/agencies/{w.agency_id(member)}/services/{service_id}{suffix}", json=body)

    return build


async def _key_proof_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    if res == "missing":
        return Req(f"/v1/agencies/{uuid.uuid4()}/keys/proof")
    member = w.member_of(c) if res == "own" else "ngo"
    return Req(f"/v1/agencies/{w.tf[member].agency_id}/keys/proof")


async def _audit_seq_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    member = w.member_of(c)
    if member == "suspended":
        member = "shelter"
    return Req(f"/v1/audit/events/{await w.seq_of(member, own=res == 'own')}")


def _fixed(path: str) -> Builder:
    async def build(w: World, c: Caller, res: str, fresh: bool) -> Req:
        return Req(path)

    return build


async def _create_webhook_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    member = w.member_of(c)

    async def after(r: httpx.Response) -> None:
        if r.status_code == 201:
            w.secrets[r.json()["secret"]] = member

    return Req(
        "/v1/webhooks",
        json={"url": "https://hooks.example.org/matrix", "event_types": ["grant.added"]},
        after=after,
    )


def _webhook_target(w: World, c: Caller, res: str) -> str:
    if res == "missing":
        return str(uuid.uuid4())
    member = w.member_of(c)
    if res == "own":
        return w.webhooks.get(member, w.webhooks["shelter"])
    return w.webhooks["ngo" if member != "ngo" else "legal"]


def _webhook_route(suffix: str) -> Builder:
    async def build(w: World, c: Caller, res: str, fresh: bool) -> Req:
        target = _webhook_target(w, c, res)
        member = w.member_of(c)
        if fresh:
            target = await w.new_webhook(member)

        async def after(r: httpx.Response) -> None:
            if r.status_code == 200 and "secret" in r.json():
                w.secrets[r.json()["secret"]] = member

        return Req(f"/v1/webhooks/{target}{suffix}", after=after)

    return build


async def _replay_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    member = w.member_of(c)
    if res == "own":
        hook = w.webhooks.get(member, w.webhooks["shelter"])
        delivery = await w.new_dead_delivery(hook) if fresh else w.dead.get(member, "none")
    else:
        other = "ngo" if member != "ngo" else "legal"
        hook, delivery = w.webhooks[other], w.dead[other]
    return Req(f"/v1/webhooks/{hook}/deliveries/{delivery}/replay")


async def _token_req(w: World, c: Caller, res: str, fresh: bool) -> Req:
    if c.auth == "none":
        client_id, seed = str(uuid.uuid4()), keys.generate_signing_key().seed
        assertion = client_assertion(client_id, seed, TOKEN_URL)
    else:
        assert c.member
        assert c.role
        client_id, auth = w.tf[c.member].clients[c.role]
        lifetime = -120 if c.auth == "expired" else 60
        assertion = client_assertion(client_id, auth.seed, TOKEN_URL, lifetime=lifetime)
    return Req(
        "/oauth/token",
        data=token_form(assertion),
    )


# ------------------------------------------------------------------ the matrix

Builder = Callable[[World, Caller, str, bool], Awaitable[Req]]
Oracle = Callable[[World, Caller, str], Expect]
ONE = ("-",)
OWN_OTHER_MISSING = ("own", "other", "missing")

ROUTES: dict[str, tuple[tuple[str, ...], Oracle, Builder, bool]] = {
    # route: (resources, expected, request builder, mutating)
    "GET /openapi.json": (ONE, _public, _fixed("/openapi.json"), False),
    "GET /health/live": (ONE, _public, _fixed("/health/live"), False),
    "GET /health/ready": (ONE, _public, _fixed("/health/ready"), False),
    "GET /.well-known/jwks.json": (ONE, _public, _fixed("/.well-known/jwks.json"), False),
    "GET /metrics": (ONE, _metrics, _fixed("/metrics"), False),
    # the web console: static files for everyone, no data (the page signs in by itself)
    "GET /console": (ONE, _status(308), _fixed("/console"), False),
    "GET /console/": (ONE, _console_page, _fixed("/console/"), False),
    "GET /console/assets/{name}": (ONE, _status(404), _fixed("/console/assets/main-0.js"), False),
    # the API reference (Swagger UI, built with the console)
    "GET /docs": (ONE, _status(308), _fixed("/docs"), False),
    "GET /redoc": (ONE, _status(308), _fixed("/redoc"), False),
    "GET /docs/": (ONE, _docs_page, _fixed("/docs/"), False),
    "GET /docs/assets/{name}": (ONE, _status(404), _fixed("/docs/assets/docs-0.js"), False),
    "POST /oauth/token": (ONE, _token, _token_req, False),
    "POST /v1/referrals": (("own", "other"), _create_referral, _create_referral_req, False),
    "GET /v1/referrals": (
        ("sent", "received"),
        _plain(Scope.REFERRALS_READ, 200),
        _list_referrals_req,
        False,
    ),
    "GET /v1/referrals/{referral_id}": (
        REFERRAL_RESOURCES,
        _referral_item(Scope.REFERRALS_READ, 200),
        _referral_route("", lambda w, c, r: None),
        False,
    ),
    "POST /v1/referrals/{referral_id}/status": (
        REFERRAL_RESOURCES,
        _referral_item(Scope.REFERRALS_STATUS, 200, recipient_only=True),
        _referral_route("/status", _status_body),
        True,
    ),
    "POST /v1/referrals/{referral_id}/withdraw": (
        REFERRAL_RESOURCES,
        _referral_item(Scope.REFERRALS_SEND, 200, sender_only=True),
        _referral_route("/withdraw", lambda w, c, r: None),
        True,
    ),
    "POST /v1/referrals/{referral_id}/grants": (
        REFERRAL_RESOURCES,
        _referral_item(Scope.REFERRALS_SEND, 200, sender_only=True),
        _referral_route("/grants", _grants_body),
        True,
    ),
    "POST /v1/referrals/{referral_id}/revocations": (
        REFERRAL_RESOURCES,
        _referral_item(Scope.REFERRALS_SEND, 200, sender_only=True),
        _referral_route("/revocations", _revocation_body),
        True,
    ),
    "GET /v1/limits": (ONE, _plain(None, 200), _fixed("/v1/limits"), False),
    "GET /v1/audit/events": (ONE, _audit_reader(200), _fixed("/v1/audit/events?limit=1000"), False),
    "GET /v1/audit/export": (ONE, _audit_reader(200), _fixed("/v1/audit/export"), False),
    "GET /v1/audit/events/{seq}": (("own", "other"), _audit_reader(200), _audit_seq_req, False),
    # every client pins and verifies checkpoints (admins too): any authenticated caller
    "GET /v1/audit/checkpoint": (ONE, _plain(None, 200), _fixed("/v1/audit/checkpoint"), False),
    "GET /v1/audit/proof/inclusion": (
        ONE,
        _audit_reader(200),
        _fixed("/v1/audit/proof/inclusion?seq=0"),
        False,
    ),
    "GET /v1/audit/proof/consistency": (
        ONE,
        _plain(None, 200),
        _fixed("/v1/audit/proof/consistency?first=1"),
        False,
    ),
    "GET /v1/audit/log-key": (ONE, _plain(None, 200), _fixed("/v1/audit/log-key"), False),
    "POST /v1/webhooks": (ONE, _plain(Scope.WEBHOOKS_MANAGE, 201), _create_webhook_req, False),
    "GET /v1/webhooks": (ONE, _plain(Scope.WEBHOOKS_MANAGE, 200), _fixed("/v1/webhooks"), False),
    "GET /v1/webhooks/{webhook_id}/deliveries": (
        OWN_OTHER_MISSING,
        _webhook_item(200),
        _webhook_route("/deliveries"),
        False,
    ),
    "POST /v1/webhooks/{webhook_id}/rotate-secret": (
        OWN_OTHER_MISSING,
        _webhook_item(200),
        _webhook_route("/rotate-secret"),
        False,
    ),
    "DELETE /v1/webhooks/{webhook_id}": (
        OWN_OTHER_MISSING,
        _webhook_item(204),
        _webhook_route(""),
        True,
    ),
    "POST /v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay": (
        ("own", "other"),
        _webhook_item(202),
        _replay_req,
        True,
    ),
    "GET /v1/directory/services": (
        ONE,
        _plain(Scope.AGENCIES_READ, 200),
        _fixed("/v1/directory/services?limit=200"),
        False,
    ),
    "GET /v1/directory/hsds": (ONE, _plain(Scope.AGENCIES_READ, 200), _fixed("/v1/directory/hsds"),
                               False),
    "POST /v1/agencies/{agency_id}/services": (
        OWN_OTHER_MISSING,
        _service_writer(201),
        _create_service_req,
        False,
    ),
    "PUT /v1/agencies/{agency_id}/services/{service_id}": (
        OWN_OTHER_MISSING,
        _service_writer(200),
        _service_route("", service_body(name="Replaced in the matrix")),
        False,
    ),
    "PATCH /v1/agencies/{agency_id}/services/{service_id}/capacity": (
        OWN_OTHER_MISSING,
        _service_writer(200),
        _service_route("/capacity", {"available": 1, "accepting": "waitlist"}),
        False,
    ),
    "DELETE /v1/agencies/{agency_id}/services/{service_id}": (
        OWN_OTHER_MISSING,
        _service_writer(204),
        _service_route("", None),
        True,
    ),
    # agency routes last: their successful mutations (key rotation, suspension) change the world
    "GET /v1/agencies": (ONE, _plain(Scope.AGENCIES_READ, 200), _fixed("/v1/agencies"), False),
    "GET /v1/agencies/{agency_id}": (OWN_OTHER_MISSING, _directory_item, _get_agency_req, False),
    "GET /v1/agencies/{agency_id}/keys/proof": (
        OWN_OTHER_MISSING,
        _directory_item,
        _key_proof_req,
        False,
    ),
    "POST /v1/agencies": (ONE, _plain(Scope.AGENCIES_ADMIN, 201), _create_agency_req, False),
    "POST /v1/agencies/{agency_id}/clients": (
        OWN_OTHER_MISSING,
        _admin_on_agency(201),
        _create_client_req,
        False,
    ),
    "POST /v1/agencies/{agency_id}/clients/{client_id}/revoke": (
        OWN_OTHER_MISSING,
        _admin_on_agency(200),
        _revoke_client_req,
        False,
    ),
    "POST /v1/agencies/{agency_id}/suspend": (
        OWN_OTHER_MISSING,
        _admin_on_agency(200),
        _suspend_req,
        False,
    ),
    "POST /v1/agencies/{agency_id}/reactivate": (
        OWN_OTHER_MISSING,
        _admin_on_agency(200),
        _reactivate_req,
        False,
    ),
    "POST /v1/agencies/{agency_id}/keys": (
        OWN_OTHER_MISSING,
        _admin_on_agency(201),
        _rotate_req,
        False,
    ),
}

CELLS = sum(len(resources) for resources, *_ in ROUTES.values()) * len(CALLERS)
"""Number of cells: every (route, caller, resource) combination, per database backend."""

EXEMPT_FROM_AUDIT = {"GET /metrics"}  # a scrape is not an access to referrals, keys or the log


def app_routes(app: FastAPI) -> set[str]:
    """Every (method, path) the app serves: its OpenAPI paths and the routes left out of it."""
    found = {
        f"{method.upper()} {path}"
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}
    }
    try:
        from fastapi.routing import iter_route_contexts

        contexts: Any = iter_route_contexts(app.routes)
    except ImportError:  # older FastAPI: plain routes
        contexts = app.routes
    for route in contexts:
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                found.add(f"{method} {route.path}")
    return found


def test_every_route_has_a_matrix_entry() -> None:
    from app.main import create_app

    served = app_routes(create_app(Settings(env="test")))
    missing = sorted(served - set(ROUTES))
    assert not missing, f"routes without an authorization matrix entry: {missing}"
    stale = sorted(set(ROUTES) - served)
    assert not stale, f"matrix entries for routes the app no longer serves: {stale}"


# ------------------------------------------------------------------ leak checks


def _leaks(w: World, c: Caller, route: str, path: str, body: str) -> list[str]:
    """What the body shows that the caller's agency may not see.

    An id the caller itself put in the path (echoed as the problem's ``instance``) is no leak.
    """
    found: list[str] = []
    member = c.member if c.auth == "valid" else None
    reads = member is not None and Scope.REFERRALS_READ in c.scopes
    agency = w.agency_id(member) if member is not None else None
    for ref in w.all_referrals:
        for fid, ciphertext in ref.body["ciphertexts"].items():
            name = ref.field_of(fid)
            if ciphertext in body and not (reads and member and ref.may_read_field(member, name)):
                found.append(f"ciphertext {ref.shape}.{name}")
        for wk in ref.body["wrapped_keys"]:
            holder = next((m for m in w.tf.members if w.agency_id(m) == wk["recipient"]), None)
            name = ref.field_of(wk["fid"])
            own_copy = member == holder and holder is not None and ref.may_read_field(holder, name)
            allowed = reads and (member == ref.sender or own_copy)
            if wk["wrapped_key"] in body and not allowed:
                found.append(f"wrapped key {ref.shape}.{name}->{holder}")
        for disclosure in ref.body["disclosures"]:
            if disclosure not in body:
                continue
            d = env.parse_disclosure(disclosure)
            value = d.value
            if member == ref.sender and reads:
                continue
            if isinstance(value, FieldValue):
                name = ref.field_of(value.fid)
                ok = member is not None and ref.may_read_field(member, name)
            elif isinstance(value, GrantValue):
                name = ref.field_of(value.fid)
                ok = value.recipient == agency and ref.may_read_field(member or "", name)
            else:
                ok = value.recipient == agency and ref.visible_to(member)
            if not (reads and ok):
                found.append(f"{d.kind} disclosure of {ref.shape} to {value.recipient}")
        # a webhook's delivery log is the history of what it was sent: a recipient was
        # notified of a referral it may no longer see (its grant revoked since)
        history = route.startswith("GET /v1/webhooks") and member in ref.notified
        if (
            route.startswith(("GET /v1/referrals", "POST /v1/referrals", "GET /v1/webhooks"))
            and ref.id in body
            and ref.id not in path
            and not (member is not None and ref.visible_to(member))
            and not history
        ):
            found.append(f"referral id {ref.shape}")
    for secret, owner in w.secrets.items():
        if secret in body and owner != member:
            found.append(f"webhook secret of {owner}")
    return found


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def _audit_leaks(w: World, responses: list[tuple[Caller, str, str]]) -> list[str]:
    """Audit events (found by event id) shown to a caller that may not read them."""
    async with w.app.state.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT event_id, actor_agency, subject_agency, action FROM audit_event")
            )
        ).all()
    events = {r[0]: r[1:] for r in rows}
    found = []
    for c, route, body in responses:
        agency = w.agency_id(c.member) if c.member and c.auth == "valid" else None
        for event_id in set(_UUID.findall(body)) & events.keys():
            actor_agency, subject_agency, action = events[event_id]
            if action in ("key:register", "key:rotate"):
                continue  # key transparency: a key's registration is public to the task force
            allowed = Scope.AUDIT_READ in c.scopes or (
                Scope.AUDIT_OWN in c.scopes and agency in (actor_agency, subject_agency)
            )
            if not allowed:
                found.append(f"{c.key} saw audit event {action} via {route}")
    return found


# ------------------------------------------------------------------ the test


def _route_order(route: str) -> int:
    return 1 if " /v1/agencies" in route else 0


async def test_authorization_matrix(
    app: FastAPI,
    client: httpx.AsyncClient,
    tf: TaskForce,
    backend: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w = World(app, client, tf)
    await w.setup()
    failures: list[str] = []
    denials: dict[str, tuple[str, Caller, str]] = {}
    shown: list[tuple[Caller, str, str]] = []
    cells = 0
    for route in sorted(ROUTES, key=_route_order):
        resources, oracle, build, mutating = ROUTES[route]
        method = route.split(" ", 1)[0]
        for caller in CALLERS:
            for res in resources:
                cells += 1
                exp = oracle(w, caller, res)
                req = await build(w, caller, res, mutating and 200 <= exp.status < 300)
                request_id = f"mx-{cells:05d}-{uuid.uuid4().hex[:8]}"
                headers = {"X-Request-Id": request_id, **req.headers}
                token = w.tokens.get(caller.key)
                if token and route != "POST /oauth/token":
                    headers["Authorization"] = f"Bearer {token}"
                r = await client.request(
                    method, req.path, json=req.json, data=req.data, headers=headers
                )
                label = f"{route} [{caller.key} / {res}]"
                if r.status_code != exp.status:
                    got = f"{r.status_code} {r.text[:200]}"
                    failures.append(f"{label}: expected {exp.status}, got {got}")
                if r.status_code >= 400:
                    ctype = r.headers.get("content-type", "").split(";")[0]
                    if ctype != PROBLEM_JSON:
                        failures.append(f"{label}: error is {ctype}, not problem+json")
                if exp.denial and route not in EXEMPT_FROM_AUDIT:
                    denials[request_id] = (route, caller, res)
                leaked = _leaks(w, caller, route, req.path, r.text)
                failures += [f"{label}: leaks {what}" for what in leaked]
                shown.append((caller, route, r.text))
                if req.after is not None:
                    await req.after(r)
                if mutating and route.startswith("POST /v1/referrals/"):
                    await _after_referral_mutation(w, req.path, r)
    assert cells == CELLS

    async with app.state.engine.connect() as conn:
        denied = (
            (await conn.execute(text("SELECT canonical FROM audit_event WHERE outcome = 'denied'")))
            .scalars()
            .all()
        )
    # the caller's X-Request-ID is kept as client_request_id (request_id is the server's)
    audited = {json.loads(c)["client_request_id"] for c in denied}
    for request_id, (route, caller, res) in denials.items():
        if request_id not in audited:
            failures.append(f"{route} [{caller.key} / {res}]: denial left no audit event")
    failures += await _audit_leaks(w, shown)
    with capsys.disabled():
        print(  # noqa: T201 (the cell count is part of the report)
            f"\nauthorization matrix ({backend}): {cells} cells, {len(denials)} denials"
        )
    assert not failures, "\n".join(failures[:80]) + f"\n({len(failures)} failures)"
