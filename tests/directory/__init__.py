"""Service directory tests: helpers to publish and find services through the API."""

from __future__ import annotations

from typing import Any

import httpx

from tests.taskforce import TaskForce


def service(**overrides: Any) -> dict[str, Any]:
    """A valid ``POST /v1/agencies/{id}/services`` body (a shelter's beds), with overrides."""
    body: dict[str, Any] = {
        "name": "Emergency beds",
        "description": "Confidential emergency shelter for survivors of trafficking.",
        "categories": ["shelter", "safety_planning"],
        "languages": ["en", "es"],
        "populations": ["women", "adults"],
        "eligibility": "Adult women referred by a task-force partner",
        "service_area": "Harbor County",
        "hours": "24/7",
        "intake": "Call the intake line; staff meet her at a safe public place",
        "accepting": "yes",
        "capacity": {"available": 3, "unit": "beds"},
    }
    body.update(overrides)
    return body


async def publish(
    client: httpx.AsyncClient, tf: TaskForce, member: str, body: dict[str, Any],
    role: str = "caseworker",
) -> dict[str, Any]:
    """Publish ``body`` as ``member``'s service; the created entry."""
    r = await client.post(
        f"/v1/agencies/{tf[member].agency_id}/services",
        json=body,
        headers=await tf.headers(member, role),
    )
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def find(
    client: httpx.AsyncClient, tf: TaskForce, member: str = "ngo", **params: Any
) -> list[dict[str, Any]]:
    """Every page of ``GET /v1/directory/services`` with ``params``, as ``member`` sees it."""
    items: list[dict[str, Any]] = []
    cursor = None
    headers = await tf.headers(member)
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/v1/directory/services", params=query, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items
