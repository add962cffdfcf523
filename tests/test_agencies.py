"""The directory and its administration."""

from __future__ import annotations

import httpx

from app.crypto import keys
from app.crypto.encoding import b64url_encode
from tests.taskforce import TaskForce


def _new_keys() -> dict[str, str]:
    k = keys.generate_agency_keys()
    return {"enc_key": b64url_encode(k.enc_public), "sign_key": b64url_encode(k.sig_public)}


async def test_directory_entry_has_the_wire_shape(client: httpx.AsyncClient, tf: TaskForce) -> None:
    r = await client.get(
        f"/v1/agencies/{tf['legal'].agency_id}", headers=await tf.headers("shelter")
    )
    assert r.status_code == 200
    entry = r.json()
    assert set(entry) == {"id", "name", "kind", "status", "keys"}
    assert entry["kind"] == "legal_aid"
    assert entry["status"] == "active"
    enc = next(k for k in entry["keys"] if k["use"] == "enc")
    assert set(enc) == {"kid", "use", "public_key", "status", "created_at"}
    assert enc["kid"] == tf["legal"].enc_kid
    assert enc["status"] == "current"
    assert enc["created_at"].endswith("Z")


async def test_admin_onboards_an_agency_and_a_client(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    admin = await tf.headers("office", "admin")
    r = await client.post(
        "/v1/agencies", json={"name": "St. Clinic", "kind": "medical", **_new_keys()}, headers=admin
    )
    assert r.status_code == 201, r.text
    agency_id = r.json()["id"]
    auth = keys.generate_signing_key()
    r = await client.post(
        f"/v1/agencies/{agency_id}/clients",
        json={"role": "caseworker", "auth_key": b64url_encode(auth.public)},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    assert r.json()["agency_id"] == agency_id
    assert r.json()["role"] == "caseworker"


async def test_only_admins_administer(client: httpx.AsyncClient, tf: TaskForce) -> None:
    for name, role in (("shelter", "caseworker"), ("office", "auditor"), ("police", "liaison")):
        r = await client.post(
            "/v1/agencies",
            json={"name": "x", "kind": "ngo", **_new_keys()},
            headers=await tf.headers(name, role),
        )
        assert r.status_code == 403, (name, role)
        assert r.headers["content-type"] == "application/problem+json"


async def test_rotation_keeps_the_old_key_listed_as_retired(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    admin = await tf.headers("office", "admin")
    old_kid = tf["legal"].enc_kid
    new = keys.generate_agency_keys()
    r = await client.post(
        f"/v1/agencies/{tf['legal'].agency_id}/keys",
        json={"enc_key": b64url_encode(new.enc_public)},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    enc = {k["kid"]: k["status"] for k in r.json()["keys"] if k["use"] == "enc"}
    assert enc == {old_kid: "retired", keys.kid(new.enc_public): "current"}


async def test_bad_keys_and_duplicates_are_refused_and_change_nothing(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    admin = await tf.headers("office", "admin")
    before = len((await client.get("/v1/agencies", headers=admin)).json()["items"])
    bad = [
        {"name": "x", "kind": "ngo", "enc_key": "short", "sign_key": _new_keys()["sign_key"]},
        {"name": "x", "kind": "spaceship", **_new_keys()},
        {"name": "", "kind": "ngo", **_new_keys()},
    ]
    for body in bad:
        r = await client.post("/v1/agencies", json=body, headers=admin)
        assert r.status_code == 422, body
        assert r.headers["content-type"] == "application/problem+json"
    reused = {
        "name": "copy",
        "kind": "ngo",
        "enc_key": b64url_encode(tf["legal"].keys.enc_public),
        "sign_key": _new_keys()["sign_key"],
    }
    r = await client.post("/v1/agencies", json=reused, headers=admin)
    assert r.status_code == 409
    after = len((await client.get("/v1/agencies", headers=admin)).json()["items"])
    assert after == before
