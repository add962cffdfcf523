"""OAuth 2.0 client credentials with private_key_jwt: issuance and every refusal."""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey
from sqlalchemy import text

from app import server_cli
from app.client.assertion import client_assertion, token_form
from app.config import Settings
from app.crypto import keys
from app.crypto.encoding import b64url_decode, b64url_encode
from app.main import create_app
from tests.taskforce import TaskForce

AUD = "http://test/oauth/token"


def _signed(seed: bytes, claims: dict[str, object], alg: str = "EdDSA") -> str:
    key = OKPKey.import_key(
        {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url_encode(keys.sig_public_from_seed(seed)),
            "d": b64url_encode(seed),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode({"alg": alg}, claims, key, algorithms=[alg])


async def _token(client: httpx.AsyncClient, assertion: str) -> httpx.Response:
    return await client.post(
        "/oauth/token",
        data=token_form(assertion),
    )


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
async def test_token_issued_for_both_jws_algorithm_names(
    client: httpx.AsyncClient, tf: TaskForce, alg: str
) -> None:
    client_id, auth = tf["shelter"].clients["caseworker"]
    r = await _token(client, client_assertion(client_id, auth.seed, AUD, alg=alg))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert "referrals:send" in body["scope"].split()
    jwks = (await client.get("/.well-known/jwks.json")).json()
    key = OKPKey.import_key(jwks["keys"][0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        claims = jwt.decode(body["access_token"], key, algorithms=["EdDSA"]).claims
    assert claims["sub"] == client_id
    assert claims["agency"] == tf["shelter"].agency_id
    assert claims["role"] == "caseworker"


def _claims(client_id: str, **over: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": client_id,
        "sub": client_id,
        "aud": AUD,
        "iat": now,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


async def test_every_bad_assertion_is_invalid_client(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    client_id, auth = tf["shelter"].clients["caseworker"]
    other = keys.generate_signing_key()
    now = int(time.time())
    cases = {
        "expired": _signed(auth.seed, _claims(client_id, exp=now - 120)),
        "too far ahead": _signed(auth.seed, _claims(client_id, exp=now + 3600)),
        "future iat": _signed(auth.seed, _claims(client_id, iat=now + 600)),
        "wrong audience": _signed(auth.seed, _claims(client_id, aud="https://evil/oauth/token")),
        "unknown client": _signed(auth.seed, _claims("no-such-client")),
        "bad signature": _signed(other.seed, _claims(client_id)),
        "no jti": _signed(auth.seed, _claims(client_id, jti=None)),
        "iss differs from sub": _signed(auth.seed, _claims(client_id, iss="someone")),
        "not a jwt": "not.a.jwt",
    }
    for name, assertion in cases.items():
        r = await _token(client, assertion)
        assert r.status_code == 401, name
        assert r.json()["error"] == "invalid_client", name
        assert r.headers["content-type"] == "application/problem+json"
        assert "www-authenticate" in r.headers


async def test_replayed_assertion_is_refused(client: httpx.AsyncClient, tf: TaskForce) -> None:
    client_id, auth = tf["shelter"].clients["caseworker"]
    assertion = client_assertion(client_id, auth.seed, AUD)
    assert (await _token(client, assertion)).status_code == 200
    r = await _token(client, assertion)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"


async def test_suspended_agency_gets_no_token_and_its_tokens_stop_working(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    headers = await tf.headers("ngo")
    assert (await client.get("/v1/agencies", headers=headers)).status_code == 200
    r = await client.post(
        f"/v1/agencies/{tf['ngo'].agency_id}/suspend", headers=await tf.headers("office", "admin")
    )
    assert r.status_code == 200
    assert r.json()["status"] == "suspended"
    client_id, auth = tf["ngo"].clients["caseworker"]
    r = await _token(client, client_assertion(client_id, auth.seed, AUD))
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    assert (await client.get("/v1/agencies", headers=headers)).status_code == 401


async def test_a_revoked_client_gets_no_token_and_its_token_stops_working(
    app: Any, client: httpx.AsyncClient, tf: TaskForce
) -> None:
    """Revoking one client (a lost laptop) leaves its agency and other clients alone."""
    headers = await tf.headers("shelter")
    other = await tf.headers("shelter", "liaison")
    assert (await client.get("/v1/agencies", headers=headers)).status_code == 200
    client_id, auth = tf["shelter"].clients["caseworker"]
    agency_id = tf["shelter"].agency_id
    admin = await tf.headers("office", "admin")
    path = f"/v1/agencies/{agency_id}/clients/{client_id}/revoke"
    r = await client.post(path, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked"
    assert r.json()["client_id"] == client_id
    assert (await client.get("/v1/agencies", headers=headers)).status_code == 401
    r = await _token(client, client_assertion(client_id, auth.seed, AUD))
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    assert (await client.get("/v1/agencies", headers=other)).status_code == 200
    # revoking again changes nothing; a client of another agency is not found there
    assert (await client.post(path, headers=admin)).json()["status"] == "revoked"
    legal_client = tf["legal"].clients["caseworker"][0]
    r = await client.post(f"/v1/agencies/{agency_id}/clients/{legal_client}/revoke", headers=admin)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    async with app.state.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT actor, subject_agency, canonical FROM audit_event "
                    "WHERE action = 'client:revoke' AND resource_id = :c ORDER BY id"
                ),
                {"c": client_id},
            )
        ).all()
    assert len(rows) == 2
    assert rows[0][0] == tf["office"].clients["admin"][0]
    assert rows[0][1] == agency_id
    assert '"from":"active"' in rows[0][2]
    assert '"from":"revoked"' in rows[1][2]


@pytest.mark.usefixtures("server_cli_env")
def test_server_cli_revokes_a_client(capsys: pytest.CaptureFixture[str]) -> None:
    k = keys.generate_agency_keys()
    assert (
        server_cli.main(
            ["create-agency", "--name", "CLI shelter", "--kind", "shelter"]
            + ["--enc-key", b64url_encode(k.enc_public)]
            + ["--sign-key", b64url_encode(k.sig_public)]
        )
        == 0
    )
    agency = json.loads(capsys.readouterr().out)["id"]
    auth = keys.generate_signing_key()
    assert (
        server_cli.main(
            ["create-client", "--agency", agency, "--role", "caseworker"]
            + ["--auth-key", b64url_encode(auth.public)]
        )
        == 0
    )
    created = json.loads(capsys.readouterr().out)
    assert server_cli.main(
        ["revoke-client", "--agency", agency, "--client", created["client_id"]]
    ) == 0
    revoked = json.loads(capsys.readouterr().out)
    assert created["status"] == "active"
    assert revoked["client_id"] == created["client_id"]
    assert revoked["status"] == "revoked"


async def test_token_key_rotation_keeps_the_previous_keys_tokens_valid_until_removed(
    settings: Settings, tf: TaskForce, tmp_path: Path
) -> None:
    """Rotation (runbook 4.1): a new current key, the old one verify-only for one
    token TTL and listed in the JWKS, then removed."""
    old_token = await tf.token("shelter", "caseworker")  # signed by the first key
    old_key = settings.data_dir / "token-signing.key"
    new_key = tmp_path / "new-token-signing.key"
    new_key.write_text(b64url_encode(keys.generate_signing_key().seed) + "\n")

    async def as_restarted(previous: Path | None) -> list[Any]:
        rotated = settings.model_copy(
            update={
                "keys": settings.keys.model_copy(
                    update={"token_key_file": new_key, "previous_token_key_file": previous}
                )
            }
        )
        other = create_app(rotated)
        async with other.router.lifespan_context(other):
            transport = httpx.ASGITransport(app=other)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                jwks = (await c.get("/.well-known/jwks.json")).json()["keys"]
                old = await c.get("/v1/agencies", headers={"Authorization": f"Bearer {old_token}"})
                client_id, auth = tf["legal"].clients["caseworker"]
                issued = await _token(c, client_assertion(client_id, auth.seed, AUD))
                new_token = issued.json()["access_token"]
                new = await c.get("/v1/agencies", headers={"Authorization": f"Bearer {new_token}"})
        header = json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "=="))
        return [[k["kid"] for k in jwks], old.status_code, new.status_code, header["kid"]]

    during = await as_restarted(previous=old_key)
    old_kid = keys.kid(keys.sig_public_from_seed(b64url_decode(old_key.read_text().strip())))
    new_kid = keys.kid(keys.sig_public_from_seed(b64url_decode(new_key.read_text().strip())))
    assert during == [[new_kid, old_kid], 200, 200, new_kid]
    after = await as_restarted(previous=None)
    assert after == [[new_kid], 401, 200, new_kid]


async def test_token_endpoint_rejects_other_grants_and_bodies(client: httpx.AsyncClient) -> None:
    r = await client.post("/oauth/token", data={"grant_type": "password"})
    assert r.status_code == 400
    assert r.json()["error"] == "unsupported_grant_type"
    r = await client.post("/oauth/token", json={"grant_type": "client_credentials"})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"
    r = await client.post("/oauth/token", data={"grant_type": "client_credentials"})
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"


async def test_v1_needs_a_valid_bearer_token(client: httpx.AsyncClient, tf: TaskForce) -> None:
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic x"}):
        r = await client.get("/v1/agencies", headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == "application/problem+json"
