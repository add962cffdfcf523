"""Directory entries as Open Referral HSDS 3 objects (Human Services Data Specification 3.2).

An agency is an HSDS ``organization`` (required: ``id``, ``name``,
``description``) and each of its services an HSDS ``service`` (required:
``id``, ``name``, ``status``), with ``organization_id``,
``eligibility_description``, ``application_process`` (how a professional
reaches intake), ``last_modified``, and nested objects each with their own
required members: ``languages`` (``id``; ``code`` is the ISO 639 primary
subtag of the BCP 47 tag, which ``note`` keeps whole), ``schedules``
(``id``; our hours as ``notes``), ``service_areas`` (``id``, ``name``),
``attributes`` (``id``, with a ``taxonomy_term``: ``id``, ``name``,
``description``) for the categories and populations, and ``capacities``
(``id``, ``unit`` {``id``, ``name``}, ``available``, ``updated``) when the
agency counts its capacity. Accepting ``no`` or ``waitlist`` is said in
``alert``.

HSDS wants a UUID for every object; the nested ones have none of their own
here, so they get name-based UUIDs (RFC 9562 version 5) derived from the
service and what they describe: the same export twice gives the same ids.
Nothing in it is a street address: the directory holds none.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from app.models.directory_tables import DirectoryService
from app.models.schemas import rfc3339
from app.vocab import Accepting, Population, Service

VERSION = "3.2"
TAXONOMY = "refgate service vocabulary (DESIGN.md, Service directory and capacity)"
_NAMESPACE = uuid.UUID("5c0f4a9e-2b1d-5e7a-9c33-0d4b6e1f7a21")

KIND_DESCRIPTIONS = {
    "social_service": "Social-service agency",
    "shelter": "Shelter",
    "legal_aid": "Legal aid",
    "medical": "Medical provider",
    "law_enforcement": "Law-enforcement unit",
    "ngo": "Non-governmental organization",
    "government": "Government office",
}
SERVICE_DESCRIPTIONS = {
    Service.SHELTER: "Emergency or transitional shelter",
    Service.HOUSING: "Longer-term housing",
    Service.LEGAL: "Legal advice and representation",
    Service.IMMIGRATION_LEGAL: "Immigration legal services (T and U visas, continued presence)",
    Service.MEDICAL: "Medical care",
    Service.MENTAL_HEALTH: "Mental-health care and counselling",
    Service.SUBSTANCE_USE: "Substance-use treatment",
    Service.CASE_MANAGEMENT: "Case management",
    Service.INTERPRETATION: "Interpretation and translation",
    Service.EMPLOYMENT: "Employment support",
    Service.EDUCATION: "Education",
    Service.FINANCIAL: "Financial assistance",
    Service.SAFETY_PLANNING: "Safety planning",
    Service.INVESTIGATION: "Criminal investigation",
    Service.VICTIM_ADVOCACY: "Victim advocacy",
    Service.BASIC_NEEDS: "Food, clothing and other basic needs",
    Service.CHILDCARE: "Childcare",
    Service.TRANSPORTATION: "Transportation",
}
POPULATION_DESCRIPTIONS = {
    Population.ADULTS: "Adults",
    Population.MINORS: "Minors",
    Population.WOMEN: "Women",
    Population.MEN: "Men",
    Population.LGBTQ: "LGBTQ+ people",
    Population.FAMILIES: "Families",
    Population.FOREIGN_NATIONALS: "Foreign nationals",
}
_ALERTS = {
    Accepting.NO: "Not accepting referrals at the moment",
    Accepting.WAITLIST: "Accepting referrals to a waitlist",
}


def _id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "|".join(parts)))


def organization(
    agency_id: str, name: str, kind: str, services: list[dict[str, Any]]
) -> dict[str, Any]:
    """An HSDS ``organization`` for a task-force agency, with its services."""
    return {
        "id": agency_id,
        "name": name,
        "description": f"{KIND_DESCRIPTIONS.get(kind, kind)}, member of the task force",
        "services": services,
    }


def _term(service_id: str, link_type: str, code: str, description: str) -> dict[str, Any]:
    term_id = _id("term", link_type, code)
    return {
        "id": _id("attribute", service_id, link_type, code),
        "link_id": service_id,
        "link_type": link_type,
        "link_entity": "service",
        "taxonomy_term_id": term_id,
        "taxonomy_term": {
            "id": term_id,
            "code": code,
            "name": code,
            "description": description,
            "taxonomy": TAXONOMY,
        },
    }


def _language(service_id: str, tag: str) -> dict[str, Any]:
    primary = tag.split("-", 1)[0].lower()
    item: dict[str, Any] = {"id": _id("language", service_id, tag), "note": f"BCP 47: {tag}"}
    if 2 <= len(primary) <= 3:  # an ISO 639 code (not a private-use or grandfathered tag)
        item["code"] = primary
    return item


def service(row: DirectoryService) -> dict[str, Any]:
    """An HSDS ``service`` for one directory entry."""
    sid = row.id
    categories = [Service(c) for c in json.loads(row.categories)]
    populations = [Population(p) for p in json.loads(row.populations)]
    out: dict[str, Any] = {
        "id": sid,
        "organization_id": row.agency_id,
        "name": row.name,
        "description": row.description,
        "status": "active",
        "last_modified": rfc3339(max(row.updated_at, row.capacity_updated_at)),
        "languages": [_language(sid, tag) for tag in json.loads(row.languages)],
        "attributes": [
            *(_term(sid, "service_category", str(c), SERVICE_DESCRIPTIONS[c]) for c in categories),
            *(_term(sid, "population", str(p), POPULATION_DESCRIPTIONS[p]) for p in populations),
        ],
        "schedules": [],
        "service_areas": [],
        "capacities": [],
    }
    if row.eligibility:
        out["eligibility_description"] = row.eligibility
    if row.intake:
        out["application_process"] = row.intake
    alert = _ALERTS.get(Accepting(row.accepting))
    if alert:
        out["alert"] = alert
    if row.hours:
        out["schedules"].append({"id": _id("schedule", sid), "service_id": sid,
                                 "notes": row.hours})
    if row.service_area:
        out["service_areas"].append({"id": _id("service_area", sid), "service_id": sid,
                                     "name": row.service_area})
    if row.available is not None:
        out["capacities"].append({
            "id": _id("capacity", sid),
            "service_id": sid,
            "unit": {"id": _id("unit", row.unit), "name": row.unit},
            "available": row.available,
            "updated": rfc3339(row.capacity_updated_at),
        })
    return out
