"""The demo task force: five agencies, their clients, key files and services.

Seeds a shelter, a legal-aid clinic, a law-enforcement unit, a community clinic
and a task-force office (auditor and admin clients) with freshly generated
keys, writes each member's key file (mode 0600) under ``<data dir>/demo/`` for
the CLI and SDK, and publishes the services each agency offers in the
directory (beds, immigration legal aid, medical care, investigation), so that
a walkthrough starts with ``refgate find``. Idempotent: an already seeded
database is left as it is (its services are added if it has none yet).

A reseed (a fresh database) starts a new audit log, which every pin of the
old one would rightly refuse as a rollback. So with each key file it writes,
the seed replaces the pin store beside it (``<key file>.pins.json``) with one
that pins the demo's log key and no checkpoint yet, and removes the
``audit verify`` state beside it: the demo never trusts on first use, and a
reset demo is not mistaken for tampering.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import keys
from app.crypto.encoding import b64url_encode
from app.identity import Actor
from app.models.directory_schemas import ServiceIn
from app.models.tables import Agency
from app.services import agencies, directory
from app.vocab import AgencyKind, Role

MEMBERS = (
    # file name, agency name, kind, role
    ("shelter", "Harbor House Shelter", AgencyKind.SHELTER, Role.CASEWORKER),
    ("legal-aid", "Eastside Legal Aid Clinic", AgencyKind.LEGAL_AID, Role.CASEWORKER),
    ("police", "County Human Trafficking Unit", AgencyKind.LAW_ENFORCEMENT, Role.LIAISON),
    ("clinic", "St. Brigid Community Clinic", AgencyKind.MEDICAL, Role.CASEWORKER),
    ("auditor", "Task Force Oversight Office", AgencyKind.GOVERNMENT, Role.AUDITOR),
)
INTAKE = "Call the task-force intake line; staff meet her at a safe public place"
SERVICES: dict[str, list[dict[str, Any]]] = {
    # key file name -> the services that agency publishes (no addresses: DESIGN.md)
    "shelter": [
        {"name": "Emergency beds for women",
         "description": "Confidential emergency shelter with safety planning and case "
                        "management for women leaving trafficking situations.",
         "categories": ["shelter", "safety_planning", "case_management"],
         "languages": ["en", "es"], "populations": ["women", "adults", "foreign_nationals"],
         "eligibility": "Women 18 and over referred by a task-force partner",
         "service_area": "Harbor County", "hours": "24/7", "intake": INTAKE,
         "accepting": "yes", "capacity": {"available": 2, "unit": "beds"}},
        {"name": "Family rooms",
         "description": "Rooms for mothers with children; childcare on site.",
         "categories": ["shelter", "childcare"], "languages": ["en", "es"],
         "populations": ["families", "women"], "service_area": "Harbor County",
         "hours": "24/7", "intake": INTAKE,
         "accepting": "waitlist", "capacity": {"available": 0, "unit": "beds"}},
    ],
    "legal-aid": [
        {"name": "Immigration legal services (T and U visas)",
         "description": "T and U visa applications, continued presence, work authorization.",
         "categories": ["immigration_legal", "legal"], "languages": ["en", "es", "fa"],
         "populations": ["foreign_nationals", "adults", "minors"],
         "service_area": "Harbor and Bay counties", "hours": "Mon-Fri 9:00-17:00",
         "intake": "Referral through refgate; an attorney calls back within one business day",
         "accepting": "yes", "capacity": {"available": 4, "unit": "appointments"}},
        {"name": "Crime victims' rights representation",
         "description": "Representation of survivors in criminal proceedings.",
         "categories": ["legal", "victim_advocacy"], "languages": ["en"],
         "populations": ["adults"], "hours": "Mon-Fri 9:00-17:00",
         "intake": "Referral through refgate",
         "accepting": "yes", "capacity": {"available": None, "unit": "slots"}},
    ],
    "police": [
        {"name": "Human trafficking investigations",
         "description": "Detectives of the county unit; a victim specialist attends every "
                        "interview.",
         "categories": ["investigation", "safety_planning"], "languages": ["en", "es"],
         "populations": ["adults", "minors"], "service_area": "Harbor County",
         "hours": "24/7 on call", "intake": "Referral through refgate; the on-call detective "
                                          "answers within the hour",
         "accepting": "yes", "capacity": {"available": None, "unit": "slots"}},
    ],
    "clinic": [
        {"name": "Medical care and forensic exams",
         "description": "Primary care, STI testing and forensic exams, without insurance.",
         "categories": ["medical", "mental_health"], "languages": ["en", "es", "zh-Hant"],
         "populations": ["adults", "minors", "lgbtq"], "service_area": "Harbor County",
         "hours": "Mon-Sat 8:00-20:00", "intake": "Referral through refgate",
         "accepting": "yes", "capacity": {"available": 6, "unit": "appointments"}},
    ],
}
MARKER = "demo/task-force.json"


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


@dataclass(frozen=True)
class Onboarded:
    """An agency registered with keys generated here, and its clients' auth keys."""

    agency_id: str
    agency_keys: keys.AgencyKeys
    clients: dict[str, tuple[str, keys.SigningKeys]]  # role -> (client_id, auth key)


async def unsafe_onboard_generated(
    db: AsyncSession, actor: Actor, *, name: str, kind: str, roles: list[str]
) -> Onboarded:
    """Register an agency and one client per role with keys generated *on this side*.

    Unsafe for real agencies, whose private keys must never leave them (they run
    ``refgate keygen``): only the demo, the tests and the benchmark use this.
    """
    agency_keys = keys.generate_agency_keys()
    agency = await agencies.create(
        db,
        actor,
        name=name,
        kind=kind,
        enc_key=b64url_encode(agency_keys.enc_public),
        sign_key=b64url_encode(agency_keys.sig_public),
    )
    clients: dict[str, tuple[str, keys.SigningKeys]] = {}
    for role in roles:
        auth = keys.generate_signing_key()
        client = await agencies.create_client(
            db, actor, agency.id, role=role, auth_key=b64url_encode(auth.public)
        )
        clients[role] = (client.client_id, auth)
    return Onboarded(agency.id, agency_keys, clients)


def _fresh_pins(key_file: Path, log_key: str | None, witnesses: list[str]) -> None:
    pins = key_file.with_name(key_file.name + ".pins.json")
    pins.unlink(missing_ok=True)
    key_file.with_name(key_file.name + ".audit-state.json").unlink(missing_ok=True)
    if log_key is not None:
        _write_private(
            pins,
            {"version": 1, "log_key": log_key, "checkpoint": None, "witnesses": witnesses,
             "quorum": len(witnesses)},
        )


def _write_key_file(
    path: Path, server_url: str, onboarded: Onboarded, role: str, client_id: str,
    auth_key: keys.SigningKeys,
) -> None:
    """A demo member's key file (mode 0600), as ``refgate keygen`` and ``configure`` leave it."""
    _write_private(
        path,
        {
            "v": 1,
            "server": server_url,
            "agency_id": onboarded.agency_id,
            "client_id": client_id,
            "role": role,
            "enc_private": b64url_encode(onboarded.agency_keys.enc_private),
            "sig_seed": b64url_encode(onboarded.agency_keys.sig_seed),
            "auth_seed": b64url_encode(auth_key.seed),
        },
    )


async def _still_seeded(maker: async_sessionmaker[AsyncSession], summary: dict[str, Any]) -> bool:
    """Whether the demo of ``summary`` (its marker file) is in this database; if so its
    services are published too (a demo seeded before the directory existed)."""
    async with maker() as db:
        if await db.get(Agency, summary["members"][0]["agency_id"]) is None:
            return False
    await _publish_services(maker, summary)
    return True


async def seed(
    maker: async_sessionmaker[AsyncSession],
    data_dir: Path,
    server_url: str,
    log_key: str | None = None,
    witnesses: list[str] | None = None,
) -> dict[str, Any]:
    marker = data_dir / MARKER
    if marker.exists():
        before: dict[str, Any] = json.loads(marker.read_text())
        if await _still_seeded(maker, before):
            return before
    system = Actor(client_id=None, agency_id=None, role="system")
    members: list[dict[str, Any]] = []
    async with maker() as db, db.begin():
        for file_name, name, kind, role in MEMBERS:
            roles: list[str] = [role, Role.ADMIN] if file_name == "auditor" else [role]
            onboarded = await unsafe_onboard_generated(
                db, system, name=name, kind=kind, roles=roles
            )
            for client_role, (client_id, auth_key) in onboarded.clients.items():
                owner = "admin" if client_role == Role.ADMIN else file_name
                path = data_dir / "demo" / f"{owner}.key.json"
                _write_key_file(path, server_url, onboarded, client_role, client_id, auth_key)
                _fresh_pins(path, log_key, list(witnesses or []))
                members.append(
                    {
                        "name": name,
                        "kind": kind,
                        "role": client_role,
                        "agency_id": onboarded.agency_id,
                        "client_id": client_id,
                        "key_file": str(path),
                    }
                )
    summary = {"members": members}
    await _publish_services(maker, summary)
    marker.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


async def _publish_services(
    maker: async_sessionmaker[AsyncSession], summary: dict[str, Any]
) -> None:
    """Publish the demo agencies' services, unless the directory already has some."""
    by_file = {Path(m["key_file"]).name.split(".")[0]: m["agency_id"] for m in summary["members"]}
    system = Actor(client_id=None, agency_id=None, role="system")
    async with maker() as db, db.begin():
        if await directory.has_services(db):
            return
        for file_name, services in SERVICES.items():
            if file_name in by_file:
                bodies = [ServiceIn.model_validate(s) for s in services]
                await directory.publish(db, system, by_file[file_name], bodies)
