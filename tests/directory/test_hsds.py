"""GET /v1/directory/hsds: Open Referral HSDS 3 organizations and services.

The schema below states, for each HSDS 3.2 object the export uses, its
``required`` members and the JSON type of every member we emit, as the
Open Referral specification (``schema/*.json`` of openreferral/specification,
branch 3.2) defines them: organization (id, name, description), service (id,
name, status in its enum), language (id), schedule (id), service_area (id),
attribute (id) with its taxonomy_term (id, name, description),
service_capacity (id, unit, available, updated) and unit (id, name). Members
typed ``string`` with ``format: uuid`` are checked as UUIDs, ``date-time`` as
RFC 3339. The test validates the whole export against it with jsonschema.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
import jsonschema

from tests.directory import publish, service
from tests.taskforce import TaskForce

UUID = {"type": "string", "format": "uuid"}
TEXT = {"type": "string"}
DATE_TIME = {"type": "string", "format": "date-time"}


def _object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


TAXONOMY_TERM = _object(["id", "name", "description"], {
    "id": UUID, "code": TEXT, "name": TEXT, "description": TEXT, "taxonomy": TEXT,
})
ATTRIBUTE = _object(["id"], {
    "id": UUID, "link_id": UUID, "taxonomy_term_id": UUID, "link_type": TEXT,
    "link_entity": TEXT, "value": TEXT, "taxonomy_term": TAXONOMY_TERM,
})
LANGUAGE = _object(["id"], {"id": UUID, "service_id": UUID, "name": TEXT, "code": TEXT,
                            "note": TEXT})
SCHEDULE = _object(["id"], {"id": UUID, "service_id": UUID, "notes": TEXT})
SERVICE_AREA = _object(["id"], {"id": UUID, "service_id": UUID, "name": TEXT,
                                "description": TEXT})
UNIT = _object(["id", "name"], {"id": UUID, "name": TEXT})
CAPACITY = _object(["id", "unit", "available", "updated"], {
    "id": UUID, "service_id": UUID, "unit": UNIT, "available": {"type": "number"},
    "maximum": {"type": "number"}, "description": TEXT, "updated": DATE_TIME,
})
SERVICE = _object(["id", "name", "status"], {
    "id": UUID, "organization_id": UUID, "name": TEXT, "description": TEXT,
    "status": {"type": "string", "enum": ["active", "inactive", "defunct", "temporarily closed"]},
    "eligibility_description": TEXT, "application_process": TEXT, "alert": TEXT,
    "last_modified": DATE_TIME,
    "languages": {"type": "array", "items": LANGUAGE},
    "schedules": {"type": "array", "items": SCHEDULE},
    "service_areas": {"type": "array", "items": SERVICE_AREA},
    "capacities": {"type": "array", "items": CAPACITY},
    "attributes": {"type": "array", "items": ATTRIBUTE},
})
ORGANIZATION = _object(["id", "name", "description"], {
    "id": UUID, "name": TEXT, "description": TEXT,
    "services": {"type": "array", "items": SERVICE},
})
EXPORT = _object(["hsds_version", "organizations"], {
    "hsds_version": {"const": "3.2"},
    "organizations": {"type": "array", "items": ORGANIZATION},
})

_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("uuid", raises=ValueError)
def _is_uuid(value: object) -> bool:
    return not isinstance(value, str) or str(uuid.UUID(value)) == value


@_FORMATS.checks("date-time", raises=ValueError)
def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return value.endswith("Z") and datetime.fromisoformat(value).tzinfo is not None


async def test_the_export_has_every_required_hsds_member_typed_right(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    beds = await publish(client, tf, "shelter", service(accepting="waitlist"))
    legal = await publish(client, tf, "legal", service(
        categories=["immigration_legal"], languages=["fa-AF", "x-private"], hours=None,
        service_area=None, eligibility=None, intake=None, populations=[],
        capacity={"available": None, "unit": "appointments"},
    ))
    r = await client.get("/v1/directory/hsds", headers=await tf.headers("police", "liaison"))
    assert r.status_code == 200, r.text
    export = r.json()
    jsonschema.validate(export, EXPORT, format_checker=_FORMATS)

    orgs = {o["id"]: o for o in export["organizations"]}
    assert set(orgs) >= {tf[m].agency_id for m in ("shelter", "legal", "police", "ngo")}
    [shelter_service] = orgs[tf["shelter"].agency_id]["services"]
    assert shelter_service["id"] == beds["id"]
    assert shelter_service["organization_id"] == tf["shelter"].agency_id
    assert shelter_service["alert"] == "Accepting referrals to a waitlist"
    assert shelter_service["capacities"][0]["available"] == 3
    assert shelter_service["capacities"][0]["unit"]["name"] == "beds"
    assert shelter_service["capacities"][0]["updated"] == beds["capacity"]["updated_at"]
    assert [lang["code"] for lang in shelter_service["languages"]] == ["en", "es"]
    codes = {a["link_type"]: [] for a in shelter_service["attributes"]}
    for a in shelter_service["attributes"]:
        codes[a["link_type"]].append(a["taxonomy_term"]["code"])
    assert codes == {"service_category": ["shelter", "safety_planning"],
                     "population": ["women", "adults"]}
    [legal_service] = orgs[tf["legal"].agency_id]["services"]
    assert legal_service["id"] == legal["id"]
    assert legal_service["capacities"] == []  # not counted: no available to state
    assert legal_service["languages"][0]["code"] == "fa"
    assert "code" not in legal_service["languages"][1]  # a private-use tag has no ISO 639 code
    assert "address" not in r.text
    again = (await client.get("/v1/directory/hsds", headers=await tf.headers("ngo"))).json()
    assert again["organizations"] == export["organizations"]  # stable ids


def test_the_schema_refuses_what_hsds_refuses() -> None:
    """The checker is not vacuous: a missing required member or a wrong type fails."""
    org = {"id": str(uuid.uuid4()), "name": "n", "description": "d", "services": [
        {"id": str(uuid.uuid4()), "name": "s", "status": "active"}]}
    jsonschema.validate({"hsds_version": "3.2", "organizations": [org]}, EXPORT,
                        format_checker=_FORMATS)
    broken: list[dict[str, Any]] = [
        {**org, "description": None},
        {k: v for k, v in org.items() if k != "description"},
        {**org, "id": "agency-1"},
        {**org, "services": [{"id": str(uuid.uuid4()), "name": "s", "status": "open"}]},
        {**org, "services": [{"id": str(uuid.uuid4()), "name": "s"}]},
        {**org, "services": [{"id": str(uuid.uuid4()), "name": "s", "status": "active",
                              "capacities": [{"id": str(uuid.uuid4()), "unit": {"name": "b"},
                                              "available": 1, "updated": "2026-12-07T00:00Z"}]}]},
    ]
    for bad in broken:
        try:
            jsonschema.validate({"hsds_version": "3.2", "organizations": [bad]}, EXPORT,
                                format_checker=_FORMATS)
        except jsonschema.ValidationError:
            continue
        raise AssertionError(f"accepted {bad}")
