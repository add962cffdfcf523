"""A seeded task force for API tests, with real keys and real OAuth tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.client.assertion import client_assertion, token_form
from app.crypto import envelope as env
from app.crypto import keys
from app.services import sequencer
from app.services.audit import Actor
from app.services.demo import unsafe_onboard_generated

SYSTEM = Actor(client_id=None, agency_id=None, role="system")


@dataclass
class Member:
    name: str
    kind: str
    agency_id: str
    keys: keys.AgencyKeys
    clients: dict[str, tuple[str, keys.SigningKeys]] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def enc_kid(self) -> str:
        return self.keys.enc_kid


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TaskForce:
    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.http = client
        self.members: dict[str, Member] = {}

    @classmethod
    async def create(cls, app: Any, client: httpx.AsyncClient) -> TaskForce:
        tf = cls(app, client)
        await tf.add("shelter", "shelter", ["caseworker", "liaison"])
        await tf.add("legal", "legal_aid", ["caseworker"])
        await tf.add("police", "law_enforcement", ["liaison", "caseworker"])
        await tf.add("ngo", "ngo", ["caseworker"])
        await tf.add("office", "government", ["auditor", "admin"])
        return tf

    async def add(self, name: str, kind: str, roles: list[str]) -> Member:
        async with self.app.state.sessionmaker() as db, db.begin():
            onboarded = await unsafe_onboard_generated(
                db, SYSTEM, name=f"{name} {uuid.uuid4().hex[:6]}", kind=kind, roles=roles
            )
        member = Member(
            name=name, kind=kind, agency_id=onboarded.agency_id, keys=onboarded.agency_keys
        )
        member.clients.update(onboarded.clients)
        self.members[name] = member
        return member

    def __getitem__(self, name: str) -> Member:
        return self.members[name]

    async def token(self, name: str, role: str) -> str:
        member = self.members[name]
        if role not in member._tokens:
            client_id, auth = member.clients[role]
            r = await self.http.post(
                "/oauth/token",
                data=token_form(client_assertion(client_id, auth.seed, "http://test/oauth/token")),
            )
            assert r.status_code == 200, r.text
            member._tokens[role] = r.json()["access_token"]
        return member._tokens[role]

    async def headers(self, name: str, role: str = "caseworker") -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token(name, role)}"}

    def seal(
        self,
        sender: str,
        fields: dict[str, str],
        consent: dict[str, dict[str, str]],
        *,
        requests: dict[str, dict[str, Any]] | None = None,
        days: int = 30,
        created_at: datetime | None = None,
        referral_id: str | None = None,
    ) -> dict[str, Any]:
        """Build an Envelope v2 body: ``consent`` is {field: {member name: purpose}}.

        ``requests`` is {member name: request value without ``recipient``}; by
        default every consented member is asked for ``legal``, urgent, case c-1.
        """
        return self.sealed(
            sender, fields, consent, requests=requests, days=days, created_at=created_at,
            referral_id=referral_id,
        ).body

    def sealed(
        self,
        sender: str,
        fields: dict[str, str],
        consent: dict[str, dict[str, str]],
        *,
        requests: dict[str, dict[str, Any]] | None = None,
        days: int = 30,
        created_at: datetime | None = None,
        referral_id: str | None = None,
    ) -> env.Sealed:
        """:meth:`seal`, with the sender's map of field names to fids."""
        s = self.members[sender]
        expires = rfc3339(datetime.now(UTC) + timedelta(days=days))
        grants = [
            env.Grant(
                field=f,
                recipient=self.members[r].agency_id,
                enc_public=self.members[r].keys.enc_public,
                purpose=purpose,
                expires_at=expires,
            )
            for f, per in consent.items()
            for r, purpose in per.items()
        ]
        names = requests or {
            r: {} for per in consent.values() for r in per
        }
        reqs = [
            env.Request(
                recipient=self.members[name].agency_id,
                services=tuple(spec.get("services", ["legal"])),
                urgency=spec.get("urgency", "urgent"),
                case_ref=spec.get("case_ref", "c-1"),
            )
            for name, spec in names.items()
        ]
        return env.seal_envelope(
            referral_id=referral_id or str(uuid.uuid4()),
            sender_agency=s.agency_id,
            sender_sig_seed=s.keys.sig_seed,
            sender_enc_public=s.keys.enc_public,
            fields=fields,
            grants=grants,
            requests=reqs,
            created_at=rfc3339(created_at or datetime.now(UTC)),
        )

    async def sequence(self) -> int:
        return await sequencer.run_once(
            self.app.state.sessionmaker, self.app.state.settings, self.app.state.server_keys
        )
