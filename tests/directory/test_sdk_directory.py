"""The SDK's directory methods against the app in-process (both databases)."""

from __future__ import annotations

from typing import Any

import pytest

from app.client.directory import AgencyNotFound, AmbiguousAgency, match_agency
from app.client.sdk import RefgateClient, RefgateError
from tests.client.test_sdk import MakeSdk, sdk  # noqa: F401 (the fixture)
from tests.directory import service
from tests.taskforce import TaskForce


async def test_publish_find_post_capacity_and_delete_through_the_sdk(
    sdk: MakeSdk, tf: TaskForce  # noqa: F811 (the fixture)
) -> None:
    shelter: RefgateClient = sdk("shelter", verify_keys=False)
    legal: RefgateClient = sdk("legal", verify_keys=False)
    created = await shelter.create_service(service())
    assert created["agency"] == tf["shelter"].agency_id
    page = await legal.find_services(category="shelter", language="es", accepting="yes")
    assert [s["id"] for s in page.items] == [created["id"]]
    assert page.next_cursor is None
    updated = await shelter.set_capacity(created["id"], available=None, accepting="waitlist")
    assert updated["capacity"]["available"] is None
    assert updated["accepting"] == "waitlist"
    updated = await shelter.set_capacity(created["id"], available=1)
    assert (updated["accepting"], updated["capacity"]["available"]) == ("waitlist", 1)
    with pytest.raises(ValueError, match="give accepting"):
        await shelter.set_capacity(created["id"])
    assert [s["id"] for s in await shelter.my_services()] == [created["id"]]
    assert await legal.my_services() == []
    replaced = await shelter.replace_service(created["id"], service(name="Beds, replaced"))
    assert replaced["name"] == "Beds, replaced"
    with pytest.raises(RefgateError) as refused:
        await legal.set_capacity(created["id"], available=5)
    assert refused.value.status == 404  # not a service of legal aid's own agency
    with pytest.raises(RefgateError) as refused:
        await shelter.create_service(service(address="12 Harbor St"))
    assert refused.value.status == 422
    assert "confidential" in refused.value.detail
    export = await legal.hsds()
    assert export["hsds_version"] == "3.2"
    await shelter.delete_service(created["id"])
    assert (await legal.find_services()).items == []


async def test_resolve_agency_by_id_or_unique_name_prefix(
    sdk: MakeSdk, tf: TaskForce  # noqa: F811 (the fixture)
) -> None:
    client: RefgateClient = sdk("shelter", verify_keys=False)
    legal = tf["legal"]
    assert await client.resolve_agency(legal.agency_id) == legal.agency_id
    name = (await client.agency(legal.agency_id)).name
    assert await client.resolve_agency(name[:4].upper()) == legal.agency_id
    await tf.add("legal2", "legal_aid", [])
    with pytest.raises(AmbiguousAgency, match="refgate find") as ambiguous:
        await client.resolve_agency("legal")
    assert len(ambiguous.value.candidates) == 2
    with pytest.raises(AgencyNotFound, match="refgate find"):
        await client.resolve_agency("Westside")


def test_an_exact_name_wins_over_longer_names_it_begins() -> None:
    agencies: list[dict[str, Any]] = [
        {"id": "a", "name": "Harbor House"}, {"id": "b", "name": "Harbor House  Annex"},
    ]
    assert match_agency("harbor  house", agencies)["id"] == "a"
    assert match_agency("harbor house a", agencies)["id"] == "b"
    with pytest.raises(AmbiguousAgency):
        match_agency("harbor", agencies)
    with pytest.raises(AgencyNotFound):
        match_agency("   ", agencies)
