"""Publishing services and capacity: the wire shape, who may write, audit, webhooks."""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from app.services import agencies
from tests.directory import find, publish, service
from tests.hardening import assert_problem, count_rows
from tests.taskforce import SYSTEM, TaskForce

SERVICE_MEMBERS = {
    "id", "agency", "agency_name", "name", "description", "categories", "languages",
    "populations", "eligibility", "service_area", "hours", "intake", "accepting", "capacity",
}


def _path(tf: TaskForce, member: str, service_id: str | None = None, tail: str = "") -> str:
    base = f"/v1/agencies/{tf[member].agency_id}/services"
    return f"{base}/{service_id}{tail}" if service_id else base


async def _events(app: FastAPI, action: str) -> list[dict[str, Any]]:
    async with app.state.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT canonical FROM audit_event WHERE action = :a ORDER BY id"), {"a": action}
        )
        return [json.loads(c) for c in rows.scalars()]


async def test_an_agency_publishes_a_service_with_the_design_members(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    created = await publish(client, tf, "shelter", service(languages=["EN", "es-mx"]))
    assert set(created) == SERVICE_MEMBERS
    assert created["agency"] == tf["shelter"].agency_id
    assert created["languages"] == ["en", "es-MX"]  # BCP 47 case (RFC 5646 2.1.1)
    assert created["accepting"] == "yes"
    capacity = created["capacity"]
    assert set(capacity) == {"available", "unit", "updated_at", "updated_by"}
    assert capacity["available"] == 3
    assert capacity["unit"] == "beds"
    assert capacity["updated_at"].endswith("Z")
    assert capacity["updated_by"] == tf["shelter"].clients["caseworker"][0]
    [found] = await find(client, tf, "legal", category="shelter")
    assert found == created


async def test_replace_changes_every_member_and_what_the_filters_find(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    created = await publish(client, tf, "legal", service(categories=["legal"]))
    replacement = service(
        name="T-visa clinic", categories=["immigration_legal"], languages=["fa-AF"],
        populations=["foreign_nationals"], accepting="waitlist",
        capacity={"available": None, "unit": "appointments"}, hours=None,
    )
    r = await client.put(
        _path(tf, "legal", created["id"]), json=replacement, headers=await tf.headers("legal")
    )
    assert r.status_code == 200, r.text
    replaced = r.json()
    assert replaced["id"] == created["id"]
    assert replaced["name"] == "T-visa clinic"
    assert replaced["hours"] is None
    assert replaced["capacity"]["available"] is None
    assert replaced["capacity"]["unit"] == "appointments"
    assert await find(client, tf, category="legal") == []
    assert [s["id"] for s in await find(client, tf, category="immigration_legal")] == [
        created["id"]
    ]
    assert [s["id"] for s in await find(client, tf, language="fa")] == [created["id"]]
    assert await find(client, tf, language="en") == []


async def test_delete_takes_it_out_of_the_directory(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    created = await publish(client, tf, "shelter", service())
    headers = await tf.headers("shelter")
    r = await client.delete(_path(tf, "shelter", created["id"]), headers=headers)
    assert r.status_code == 204, r.text
    assert await find(client, tf) == []
    assert await count_rows(app.state.engine, "directory_service") == {"directory_service": 0}
    r = await client.delete(_path(tf, "shelter", created["id"]), headers=headers)
    assert_problem(r, 404)


async def test_capacity_update_is_visible_to_another_agency_at_once(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    created = await publish(client, tf, "shelter", service())
    r = await client.patch(
        _path(tf, "shelter", created["id"], "/capacity"),
        json={"available": 0, "accepting": "no"},
        headers=await tf.headers("shelter"),
    )
    assert r.status_code == 200, r.text
    patched = r.json()
    [seen] = await find(client, tf, "legal")
    assert seen["accepting"] == "no"
    assert seen["capacity"]["available"] == 0
    assert seen["capacity"]["updated_at"] == patched["capacity"]["updated_at"]
    assert seen["capacity"]["updated_at"] > created["capacity"]["updated_at"]
    assert seen["capacity"]["updated_by"] == tf["shelter"].clients["caseworker"][0]
    assert await find(client, tf, "legal", accepting="yes") == []


async def test_capacity_takes_any_of_its_three_members(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    created = await publish(client, tf, "shelter", service())
    url = _path(tf, "shelter", created["id"], "/capacity")
    headers = await tf.headers("shelter")
    r = await client.patch(url, json={"available": 2}, headers=headers)
    assert r.status_code == 200, r.text
    assert (r.json()["accepting"], r.json()["capacity"]["available"]) == ("yes", 2)
    r = await client.patch(url, json={"unit": "slots", "available": None}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["capacity"] == {**r.json()["capacity"], "available": None, "unit": "slots"}
    r = await client.patch(url, json={"accepting": "waitlist"}, headers=headers)
    assert r.json()["accepting"] == "waitlist"
    for bad in ({}, {"accepting": None}, {"available": -1}, {"available": "2"},
                {"unit": "rooms"}, {"available": 2, "note": "x"}, {"address": "1 Main St"}):
        assert_problem(await client.patch(url, json=bad, headers=headers), 422)
    [seen] = await find(client, tf)
    assert (seen["accepting"], seen["capacity"]["available"]) == ("waitlist", None)


async def test_an_address_is_refused_saying_why_and_nothing_is_stored(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    headers = await tf.headers("shelter")
    for member in ("address", "street_address"):
        r = await client.post(
            _path(tf, "shelter"), json=service(**{member: "12 Harbor St"}), headers=headers
        )
        problem = assert_problem(r, 422)
        assert "confidential sites' street addresses never go in the directory" in problem["detail"]
    created = await publish(client, tf, "shelter", service())
    r = await client.put(
        _path(tf, "shelter", created["id"]), json=service(address="12 Harbor St"), headers=headers
    )
    assert "confidential" in assert_problem(r, 422)["detail"]
    assert (await count_rows(app.state.engine, "directory_service"))["directory_service"] == 1
    assert len(await _events(app, "service:create")) == 1
    assert await _events(app, "service:replace") == []


async def test_malformed_services_are_refused_and_change_nothing(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    headers = await tf.headers("shelter")
    bad: list[dict[str, Any]] = [
        service(website="https://example.org"),  # unknown member
        service(categories=[]),
        service(categories=["shelter", "shelter"]),
        service(categories=["spa"]),
        service(populations=["everyone"]),
        service(languages=["en_US"]),
        service(languages=["e"]),
        service(languages=["en-US-US-x"]),
        service(languages=["es", "es"]),
        service(accepting="maybe"),
        service(name=""),
        service(name=7),
        service(capacity={"available": 2}),
        service(capacity={"available": 1.5, "unit": "beds"}),
        service(capacity={"available": True, "unit": "beds"}),
        service(description="nul\x00byte"),
    ]
    for body in bad:
        assert_problem(await client.post(_path(tf, "shelter"), json=body, headers=headers), 422)
    assert (await count_rows(app.state.engine, "directory_service"))["directory_service"] == 0


async def test_only_the_agencys_own_caseworkers_and_admins_write(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    await tf.add("clinic", "medical", ["caseworker", "admin", "liaison", "auditor"])
    own = await publish(client, tf, "clinic", service(categories=["medical"]), role="admin")
    assert own["capacity"]["updated_by"] == tf["clinic"].clients["admin"][0]
    patch = {"available": 1}
    for caller, role in (("shelter", "caseworker"), ("office", "admin"), ("police", "caseworker")):
        headers = await tf.headers(caller, role)
        problem = assert_problem(
            await client.patch(_path(tf, "clinic", own["id"], "/capacity"), json=patch,
                               headers=headers), 403,
        )
        assert "own caseworkers and admins" in problem["detail"]
        assert_problem(await client.post(_path(tf, "clinic"), json=service(), headers=headers), 403)
    for role in ("liaison", "auditor"):
        r = await client.patch(_path(tf, "clinic", own["id"], "/capacity"), json=patch,
                               headers=await tf.headers("clinic", role))
        assert "services:write" in assert_problem(r, 403)["detail"]
    # a service of another agency under one's own agency's path does not exist there
    r = await client.patch(_path(tf, "shelter", own["id"], "/capacity"), json=patch,
                           headers=await tf.headers("shelter"))
    assert_problem(r, 404)
    [seen] = await find(client, tf)
    assert seen["capacity"]["available"] == own["capacity"]["available"]
    denied = [e for e in await _events(app, "capacity:update") if e["outcome"] == "denied"]
    assert len(denied) == 4
    subjects = {e["subject_agency"] for e in denied}
    assert subjects == {tf["clinic"].agency_id, tf["shelter"].agency_id}


async def test_every_write_is_audited_with_its_service(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    created = await publish(client, tf, "shelter", service())
    headers = await tf.headers("shelter")
    await client.patch(_path(tf, "shelter", created["id"], "/capacity"), json={"available": 1},
                       headers=headers)
    await client.put(_path(tf, "shelter", created["id"]), json=service(), headers=headers)
    await client.delete(_path(tf, "shelter", created["id"]), headers=headers)
    for action in ("service:create", "capacity:update", "service:replace", "service:delete"):
        [event] = await _events(app, action)
        assert event["outcome"] == "ok"
        assert event["resource_id"] == created["id"]
        assert event["subject_agency"] == tf["shelter"].agency_id
        assert event["actor"] == tf["shelter"].clients["caseworker"][0]
    [update] = await _events(app, "capacity:update")
    assert update["detail"] == {
        "from": {"accepting": "yes", "available": 3, "unit": "beds"},
        "to": {"accepting": "yes", "available": 1, "unit": "beds"},
    }
    await find(client, tf)
    [search] = await _events(app, "directory:search")
    assert search["detail"]["count"] == 0


async def test_capacity_updated_is_pushed_to_subscribed_agencies(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    for member, types in (("legal", ["capacity.updated"]), ("ngo", ["referral.received"])):
        r = await client.post(
            "/v1/webhooks",
            json={"url": f"https://hooks.example.org/{member}", "event_types": types},
            headers=await tf.headers(member),
        )
        assert r.status_code == 201, r.text
    created = await publish(client, tf, "shelter", service())
    r = await client.patch(_path(tf, "shelter", created["id"], "/capacity"),
                           json={"available": 0, "accepting": "no"},
                           headers=await tf.headers("shelter"))
    assert r.status_code == 200, r.text
    async with app.state.engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT w.agency_id, d.event_type, d.payload FROM webhook_delivery d "
            "JOIN webhook w ON w.id = d.webhook_id"
        ))).all()
    assert [(a, t) for a, t, _ in rows] == [(tf["legal"].agency_id, "capacity.updated")]
    payload = json.loads(rows[0][2])
    assert payload["type"] == "capacity.updated"
    assert payload["data"] == {
        "service_id": created["id"], "agency": tf["shelter"].agency_id, "accepting": "no",
        "available": 0, "unit": "beds", "updated_at": r.json()["capacity"]["updated_at"],
    }


async def test_a_suspended_agencys_services_are_not_listed(
    app: FastAPI, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    await publish(client, tf, "shelter", service())
    kept = await publish(client, tf, "legal", service(categories=["legal"]))
    async with app.state.sessionmaker() as db, db.begin():
        await agencies.set_status(db, SYSTEM, tf["shelter"].agency_id, "suspended")
    assert [s["id"] for s in await find(client, tf)] == [kept["id"]]
    r = await client.get("/v1/directory/hsds", headers=await tf.headers("ngo"))
    names = {o["id"] for o in r.json()["organizations"]}
    assert tf["shelter"].agency_id not in names


async def test_odd_ids_in_the_path_are_404_not_errors(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    headers = await tf.headers("shelter")
    own = tf["shelter"].agency_id
    for service_id in ("x" * 2000, "%25", "..", "' OR 1=1 --"):
        r = await client.put(f"/v1/agencies/{own}/services/{service_id}", json=service(),
                             headers=headers)
        assert_problem(r, 404, 405)
    r = await client.post(f"/v1/agencies/{'y' * 500}/services", json=service(), headers=headers)
    assert_problem(r, 404)
