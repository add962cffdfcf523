from __future__ import annotations

import httpx

from tests.taskforce import TaskForce


async def test_health_and_token_flow(client: httpx.AsyncClient, tf: TaskForce) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    assert (await client.get("/health/ready")).status_code == 200
    r = await client.get("/v1/agencies", headers=await tf.headers("shelter"))
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 5
