"""Retention: purging removes ciphertexts and wrapped keys from the database files
themselves, keeps metadata, and leaves an audit log that still verifies."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app import server_cli
from app.client.audit_verify import verify_log
from app.config import RetentionSettings, Settings, WebhookSettings
from app.crypto import envelope as env
from app.models.tables import Referral, ReferralField, WrappedKey
from app.models.types import utcnow
from app.services import retention
from app.services.webhooks import WebhookRunner
from tests.rawdb import raw_database
from tests.taskforce import TaskForce, rfc3339

LEGAL = "service_provision"


async def _send(client: httpx.AsyncClient, tf: TaskForce, fields: list[str], **kw: Any) -> dict:
    body = tf.seal(
        "shelter",
        {f: f"{f} of the survivor, to be forgotten" for f in fields},
        {f: {"legal": LEGAL} for f in fields},
        **kw,
    )
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    return body


async def _withdrawn(client: httpx.AsyncClient, tf: TaskForce) -> str:
    """A one-field referral, sent and withdrawn by the sender; its id."""
    rid: str = (await _send(client, tf, ["full_name"]))["manifest"]["referral_id"]
    r = await client.post(f"/v1/referrals/{rid}/withdraw", headers=await tf.headers("shelter"))
    assert r.status_code == 200, r.text
    return rid


def _secrets(body: dict) -> list[bytes]:
    """What must leave the database: every ciphertext and every wrapped key."""
    return [c.encode() for c in body["ciphertexts"].values()] + [
        w["wrapped_key"].encode() for w in body["wrapped_keys"]
    ]


async def _count(app: Any, model: Any, referral_ids: list[str]) -> int:
    async with app.state.sessionmaker() as db:
        return int(
            await db.scalar(
                select(func.count()).select_from(model).where(model.referral_id.in_(referral_ids))
            )
            or 0
        )


@pytest.fixture
async def auditor(app: Any, tf: TaskForce) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    headers = await tf.headers("office", "auditor")
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers=headers
    ) as c:
        yield c


async def test_purge_removes_ciphertext_from_the_raw_database_and_the_log_still_verifies(
    app: Any,
    client: httpx.AsyncClient,
    tf: TaskForce,
    settings: Settings,
    auditor: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    closed = await _send(client, tf, ["full_name", "narrative"])
    withdrawn = await _send(client, tf, ["full_name"])
    still_open = await _send(client, tf, ["contact"])
    ids = {
        name: b["manifest"]["referral_id"]
        for name, b in [("closed", closed), ("withdrawn", withdrawn), ("open", still_open)]
    }
    legal = await tf.headers("legal")
    for status in ("accepted", "completed"):
        signed = env.sign_status(
            referral_id=ids["closed"], recipient=tf["legal"].agency_id, status=status,
            reason=None, note=None, signed_at=rfc3339(utcnow()), sig_seed=tf["legal"].keys.sig_seed,
        )
        r = await client.post(f"/v1/referrals/{ids['closed']}/status", json=signed, headers=legal)
        assert r.status_code == 200, r.text

    before = await raw_database(settings)
    for body in (closed, withdrawn, still_open):
        for secret in _secrets(body):
            assert secret in before, "the check must be able to see what it looks for"
    # withdrawing shreds the recipients' wrapped keys at once; the sender's copy waits
    r = await client.post(
        f"/v1/referrals/{ids['withdrawn']}/withdraw", headers=await tf.headers("shelter")
    )
    assert r.status_code == 200, r.text
    assert await _count(app, WrappedKey, [ids["withdrawn"]]) == 1

    now = utcnow()
    # Day 31: the withdrawn referral (30 days) goes, with the sender's copy of its key;
    # the consents (30 days) expired, so their wrapped keys go too; closed (90 days)
    # and expired (+30 days) wait.
    first = await retention.run(app.state.engine, settings, now + timedelta(days=31))
    assert (first.referrals, first.withdrawn, first.closed, first.expired) == (1, 1, 0, 0)
    assert (first.fields, first.wrapped_keys, first.expired_grant_keys) == (1, 1, 3)
    assert first.referral_ids == [ids["withdrawn"]]
    # Day 91: the closed referral, and the open one whose consents ended 61 days ago.
    second = await retention.run(app.state.engine, settings, now + timedelta(days=91))
    assert (second.referrals, second.closed, second.expired) == (2, 1, 1)
    assert (second.fields, second.wrapped_keys, second.expired_grant_keys) == (3, 3, 0)
    third = await retention.run(app.state.engine, settings, now + timedelta(days=92))
    assert third.referrals == 0

    every = list(ids.values())
    assert await _count(app, ReferralField, every) == 0
    assert await _count(app, WrappedKey, every) == 0
    after = await raw_database(settings)
    for body in (closed, withdrawn, still_open):
        for secret in _secrets(body):
            assert secret not in after

    # metadata and statuses stay; purged_at is set
    async with app.state.sessionmaker() as db:
        purged = {r.id: r.purged_at for r in await db.scalars(select(Referral))}
    assert all(purged[i] is not None for i in every)
    sent = (await client.get("/v1/referrals?box=sent", headers=await tf.headers("shelter"))).json()
    assert {i["referral_id"] for i in sent["items"]} == set(every)

    await tf.sequence()
    events = (
        await auditor.get("/v1/audit/events", params={"action": "retention:purge"})
    ).json()["items"]
    details = sorted((e["event"]["detail"] for e in events), key=lambda d: d["referrals"])
    assert [(d["referrals"], d["fields"], d["wrapped_keys"]) for d in details] == [
        (1, 1, 1),
        (2, 3, 3),
    ]
    assert all(e["event"]["role"] == "system" for e in events)
    out = io.StringIO()
    report = await verify_log(auditor, state_file=tmp_path / "state.json", out=out, full=True)
    assert report.ok, out.getvalue()


async def test_dry_run_counts_and_changes_nothing(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, settings: Settings
) -> None:
    rid = await _withdrawn(client, tf)
    later = utcnow() + timedelta(days=31)
    dry = await retention.run(app.state.engine, settings, later, dry_run=True)
    assert dry.dry_run
    # the recipient's key went with the withdrawal: only the sender's copy is left
    assert (dry.referrals, dry.withdrawn, dry.fields, dry.wrapped_keys) == (1, 1, 1, 1)
    assert await _count(app, ReferralField, [rid]) == 1
    assert await _count(app, WrappedKey, [rid]) == 1
    async with app.state.sessionmaker() as db:
        assert (await db.get(Referral, rid)).purged_at is None  # type: ignore[union-attr]
    real = await retention.run(app.state.engine, settings, later)
    assert (real.referrals, real.fields, real.wrapped_keys) == (1, 1, 1)


async def test_expired_consent_loses_its_wrapped_key_but_the_referral_stays(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, settings: Settings
) -> None:
    body = await _send(client, tf, ["full_name"], days=1)
    rid = body["manifest"]["referral_id"]
    (fid,) = body["ciphertexts"]
    report = await retention.run(app.state.engine, settings, utcnow() + timedelta(days=2))
    assert (report.referrals, report.expired_grant_keys) == (0, 1)
    async with app.state.sessionmaker() as db:
        left = [(w.recipient, w.fid) for w in await db.scalars(select(WrappedKey))]
    assert left == [(tf["shelter"].agency_id, fid)], "the sender keeps its own copy"
    assert await _count(app, ReferralField, [rid]) == 1


async def test_periodic_job_in_the_dispatcher_runner_purges(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, settings: Settings
) -> None:
    rid = await _withdrawn(client, tf)
    eager = settings.model_copy(
        update={
            "retention": RetentionSettings(withdrawn_days=0, interval=0.05),
            "webhooks": WebhookSettings(poll_interval=0.05),
        }
    )
    runner = WebhookRunner(app.state.engine, app.state.sessionmaker, eager)
    runner.start()
    try:
        for _ in range(200):
            async with app.state.sessionmaker() as db:
                referral = await db.get(Referral, rid)
            if referral is not None and referral.purged_at is not None:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the periodic purge did not run")
        assert runner.is_leader
    finally:
        await runner.stop()
    assert await _count(app, ReferralField, [rid]) == 0


@pytest.mark.usefixtures("server_cli_env")
def test_server_cli_purge_prints_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert server_cli.main(["purge", "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert server_cli.main(["purge"]) == 0
    real = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] is True
    assert real["dry_run"] is False
    for report in (dry, real):
        assert {k: report[k] for k in ("referrals", "fields", "wrapped_keys")} == {
            "referrals": 0,
            "fields": 0,
            "wrapped_keys": 0,
        }
