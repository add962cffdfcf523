"""deploy/postgres/roles.sql + grants.sql on the real PostgreSQL: the gateway runs as
``refgate_app`` end to end, and cannot change the audit log by privilege *and* by trigger."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.config import AuditSettings, Settings
from app.crypto import envelope as env
from app.main import create_app
from app.migrate import upgrade
from tests.conftest import (
    BACKENDS,
    PG_ADMIN_URL,
    REQUIRE_PG,
    _pg_admin,
    _pg_reachable,
    _plain,
)
from tests.taskforce import TaskForce, rfc3339

# refgate_owner and refgate_app are cluster-wide: every test here runs on one xdist worker,
# whose module fixture sets their passwords and drops them at the end
pytestmark = pytest.mark.xdist_group("postgres-roles")

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = secrets.token_hex(16)


def _url(role: str, database: str, driver: str = "postgresql+asyncpg") -> str:
    host = _plain(PG_ADMIN_URL).split("@", 1)[1].rsplit("/", 1)[0]
    return f"{driver}://{role}:{PASSWORD}@{host}/{database}"


def _psql(url: str, *args: str) -> None:
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, *args],
                   check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def role_db() -> Iterator[str]:
    if "postgresql" not in BACKENDS:
        pytest.skip("REFGATE_TEST_BACKENDS leaves PostgreSQL out")
    if shutil.which("psql") is None or not _pg_reachable():
        if REQUIRE_PG:
            pytest.fail("PostgreSQL and psql are required for the role test")
        pytest.skip("PostgreSQL or psql not available")
    name = f"refgate_roles_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f"CREATE DATABASE {name}"))
    admin = _plain(PG_ADMIN_URL).rsplit("/", 1)[0] + f"/{name}"
    try:
        _psql(admin, "-v", f"owner_password={PASSWORD}", "-v", f"app_password={PASSWORD}",
              "-f", str(ROOT / "deploy/postgres/roles.sql"))
        upgrade(Settings(env="test", database_url=_url("refgate_owner", name)))
        _psql(_url("refgate_owner", name, "postgresql"), "-f",
              str(ROOT / "deploy/postgres/grants.sql"))
        yield name
    finally:
        asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        try:  # roles are cluster-wide; another database may still use them
            asyncio.run(_pg_admin("DROP ROLE IF EXISTS refgate_app, refgate_owner"))
        except asyncpg.PostgresError:
            pass


@pytest.fixture
async def app_role_app(role_db: str, tmp_path: Path) -> AsyncIterator[object]:
    settings = Settings(
        env="test", data_dir=tmp_path, database_url=_url("refgate_app", role_db),
        audit=AuditSettings(sequencer_enabled=False, checkpoint_interval=0),
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_the_gateway_runs_end_to_end_as_the_application_role(
    app_role_app: object, role_db: str
) -> None:
    transport = httpx.ASGITransport(app=app_role_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        tf = await TaskForce.create(app_role_app, client)
        shelter = await tf.headers("shelter")
        assert (await client.get("/v1/limits", headers=shelter)).status_code == 200
        sealed = tf.sealed(
            "shelter", {"full_name": "A. Person", "narrative": "Met at the bus station."},
            {"full_name": {"legal": "service_provision", "police": "investigation"}},
        )
        rid = sealed.body["manifest"]["referral_id"]
        assert (await client.post("/v1/referrals", json=sealed.body,
                                  headers=shelter)).status_code == 201
        assert (await client.get(f"/v1/referrals/{rid}",
                                 headers=await tf.headers("legal"))).status_code == 200
        status = env.sign_status(
            referral_id=rid, recipient=tf["legal"].agency_id, status="accepted", reason=None,
            note=None, signed_at=rfc3339(datetime.now(UTC)), sig_seed=tf["legal"].keys.sig_seed,
        )
        r = await client.post(f"/v1/referrals/{rid}/status", json=status,
                              headers=await tf.headers("legal"))
        assert r.status_code == 200, r.text
        own = (await client.get(f"/v1/referrals/{rid}", headers=shelter)).json()
        amendment = env.amend(
            own, sender_agency=tf["shelter"].agency_id, sender_sig_seed=tf["shelter"].keys.sig_seed,
            sender_enc_private=tf["shelter"].keys.enc_private,
            grants=[env.Grant("narrative", tf["legal"].agency_id, tf["legal"].keys.enc_public,
                              "service_provision", rfc3339(datetime.now(UTC) + timedelta(days=7)))],
            requests=[],
        )
        r = await client.post(f"/v1/referrals/{rid}/grants", json=amendment, headers=shelter)
        assert r.status_code == 200, r.text
        r = await client.post(
            f"/v1/referrals/{rid}/revocations",
            json={"revocations": [{"fid": sealed.fids["full_name"],
                                   "recipient": tf["police"].agency_id}]},
            headers=shelter,
        )
        assert r.status_code == 200, r.text
        r = await client.post(f"/v1/referrals/{rid}/withdraw", headers=shelter)
        assert r.status_code == 200, r.text
        assert (await client.get(f"/v1/referrals/{rid}",
                                 headers=await tf.headers("legal"))).status_code == 404
        assert await tf.sequence() > 0
        auditor = await tf.headers("office", "auditor")
        assert (await client.get("/v1/audit/checkpoint", headers=auditor)).status_code == 200
        assert (await client.get("/v1/audit/events", headers=auditor)).json()["items"]

    conn = await asyncpg.connect(_url("refgate_app", role_db, "postgresql"))
    try:
        for sql in ("UPDATE audit_event SET canonical = ''", "DELETE FROM audit_leaf",
                    "TRUNCATE audit_event", "UPDATE audit_checkpoint SET note = ''",
                    "DELETE FROM audit_pending", "DELETE FROM directory_entry"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(sql)
    finally:
        await conn.close()
    owner = await asyncpg.connect(_url("refgate_owner", role_db, "postgresql"))
    try:
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await owner.execute("UPDATE audit_event SET canonical = canonical")
    finally:
        await owner.close()
