"""Faults under load, with nothing lost (PostgreSQL; a live server with two workers).

A real ``refgate-server serve --workers 2`` runs on a free port against the
test's PostgreSQL database. Concurrent clients create referrals (shelter) and
post signed status updates on them (legal aid) while a fault strikes mid-load:

(a) every connection of the test database is killed with
    ``pg_terminate_backend``, twice. From the gateway's point of view that is
    what a PostgreSQL restart does (every session dies, in-flight statements
    fail, the pool must reconnect, the sequencer loses its advisory lock),
    without stopping the cluster that other test runs share;
(a') the cluster itself is restarted (``pg_ctlcluster restart -m fast``) where
    ``REFGATE_TEST_RESTART_POSTGRES=1`` says nothing else uses it (``.ci/run``);
    marked ``serial``: it runs alone, never beside another test of a parallel run;
(b) one uvicorn worker is killed with SIGKILL; uvicorn's supervisor starts a
    new one, and the test waits until there are two again.

Afterwards, with the server's own sequencer given time to catch up:

- every create answered 201 is stored whole (each field's disclosure and
  ciphertext as sent, every grant, wrapped key and request) and readable through
  the API;
- every create that failed is either absent from every table or stored whole
  (its commit may have succeeded before the answer was lost): nothing partial;
- every committed referral has exactly one ``referral:create`` event and no
  other id has one; each referral's status events form one unbroken path from
  ``requested`` to the status stored, with no transition twice;
- the log verifies in full: positions contiguous, the root recomputed from the
  events equals the tree state and every checkpoint; nothing left pending, so
  the server's sequencer resumed after the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from app.config import Settings
from app.crypto import envelope
from app.crypto.wire import FieldValue
from app.main import create_app
from app.services import sequencer
from tests.conftest import PG_ADMIN_URL
from tests.hardening import quiet_settings, verify_audit_log
from tests.taskforce import TaskForce, rfc3339

pytestmark = [
    pytest.mark.parametrize("backend", ["postgresql"]),
    pytest.mark.slow,  # a live two-worker server under load, with faults
]

CREATES = 160
CONCURRENCY = 12
METRICS_TOKEN = "fault-test-metrics-token-0123456789"
STATUS_ORDER = ["requested", "received", "accepted"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: asyncio.subprocess.Process
    url: str
    log: Path

    def workers(self) -> list[int]:
        """Pids of the uvicorn worker processes (children spawned by multiprocessing)."""
        found = []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        for pid in children.read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                found.append(int(pid))
        return found


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return quiet_settings(database_url, tmp_path)


@pytest.fixture
async def seeded(settings: Settings) -> AsyncIterator[TaskForce]:
    """The task force, seeded in-process on the server's database and key files."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            tf = await TaskForce.create(app, client)
            for name in ("shelter", "legal"):
                await tf.token(name, "caseworker")
            yield tf


@asynccontextmanager
async def live_server(env: dict[str, str], log: Path, *, workers: int = 2) -> AsyncIterator[Server]:
    """``refgate-server serve --workers N`` with ``env`` over this process's environment
    (``REFGATE_ENV=test``), ready once every worker answers; stopped with SIGTERM."""
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "refgate-server"),
        "serve", "--workers", str(workers), "--port", str(port),
    ]
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *command, env={**os.environ, "REFGATE_ENV": "test", **env}, stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    srv = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        await _wait_ready(srv, workers=workers)
        yield srv
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture
async def server(settings: Settings, seeded: TaskForce, tmp_path: Path) -> AsyncIterator[Server]:
    env = {
        "REFGATE_DATA_DIR": str(settings.data_dir),
        "REFGATE_DATABASE_URL": str(settings.database_url),
        "REFGATE_DB_POOL_SIZE": "5",
        "REFGATE_AUDIT__POLL_INTERVAL": "0.1",
        "REFGATE_AUDIT__CHECKPOINT_INTERVAL": "0.5",
        "REFGATE_WEBHOOKS__DISPATCHER_ENABLED": "false",
        "REFGATE_RATELIMIT__API_PER_CLIENT": "1000000",
        "REFGATE_RATELIMIT__API_BURST": "1000000",
        "REFGATE_METRICS__TOKEN": METRICS_TOKEN,
    }
    async with live_server(env, tmp_path / "server.log") as srv:
        yield srv


async def _wait_ready(srv: Server, *, workers: int, within: float = 40.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=srv.url, timeout=2.0) as c:
        while time.monotonic() < deadline:
            assert srv.process.returncode is None, srv.log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                r = await c.get("/health/ready")
                if r.status_code == 200 and len(srv.workers()) == workers:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError(f"server not ready:\n{srv.log.read_text()[-3000:]}")


# ------------------------------------------------------------------ load


@dataclass
class Load:
    creates: dict[str, str] = field(default_factory=dict)  # referral id -> outcome
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: list[tuple[str, str, str]] = field(default_factory=list)  # (id, status, outcome)
    done: int = 0

    def outcomes(self) -> Counter[str]:
        return Counter([*self.creates.values(), *(o for _, _, o in self.statuses)])


def _outcome(response: httpx.Response | None, exc: BaseException | None) -> str:
    if exc is not None:
        return f"error:{type(exc).__name__}"
    assert response is not None
    if response.status_code >= 400:
        ctype = response.headers.get("content-type", "")
        assert ctype.startswith("application/problem+json"), (response.status_code, ctype)
    return str(response.status_code)


async def _drive(
    srv: Server, tf: TaskForce, fault: Callable[[], Awaitable[None]], fault_at: list[int]
) -> Load:
    """CREATES creates, each followed by two status updates, CONCURRENCY at a time."""
    load = Load()
    bodies = [
        tf.seal(
            "shelter",
            {"full_name": f"Person {i}", "narrative": f"Narrative {i}", "language": "es"},
            {
                "full_name": {"legal": "service_provision"},
                "narrative": {"legal": "service_provision"},
            },
        )
        for i in range(CREATES)
    ]
    shelter = {"Authorization": f"Bearer {await tf.token('shelter', 'caseworker')}"}
    legal = {"Authorization": f"Bearer {await tf.token('legal', 'caseworker')}"}
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    triggers = sorted(fault_at)

    async def call(http: httpx.AsyncClient, path: str, body: Any, headers: Any) -> str:
        response, error = None, None
        try:
            response = await http.post(path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            error = exc
        return _outcome(response, error)

    async def worker(http: httpx.AsyncClient) -> None:
        while True:
            try:
                body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            rid = body["manifest"]["referral_id"]
            load.bodies[rid] = body
            load.creates[rid] = await call(http, "/v1/referrals", body, shelter)
            load.done += 1
            while triggers and load.done >= triggers[0]:
                triggers.pop(0)
                await fault()
            if load.creates[rid] == "201":
                for status in ("received", "accepted"):
                    signed = envelope.sign_status(
                        referral_id=rid, recipient=tf["legal"].agency_id, status=status,
                        reason=None, note=None, signed_at=rfc3339(datetime.now(UTC)),
                        sig_seed=tf["legal"].keys.sig_seed,
                    )
                    outcome = await call(http, f"/v1/referrals/{rid}/status", signed, legal)
                    load.statuses.append((rid, status, outcome))

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    timeout = httpx.Timeout(15.0, connect=5.0)
    async with httpx.AsyncClient(base_url=srv.url, timeout=timeout, limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
    return load


# ------------------------------------------------------------------ checks


async def _settled(settings: Settings, within: float = 30.0) -> float:
    """Seconds until the server's sequencer has integrated everything and signed it."""
    from app.db import create_engine

    engine = create_engine(settings)
    started = time.monotonic()
    try:
        while time.monotonic() - started < within:
            async with engine.connect() as conn:
                pending = (await conn.execute(text("SELECT count(*) FROM audit_pending"))).scalar()
                size = (await conn.execute(text("SELECT size FROM audit_tree_state"))).scalar()
                signed = (
                    await conn.execute(text("SELECT max(tree_size) FROM audit_checkpoint"))
                ).scalar()
            if pending == 0 and signed == size:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()
    raise AssertionError(f"the sequencer did not catch up: {pending} pending, {signed}/{size}")


async def _verify(settings: Settings, load: Load, tf: TaskForce) -> dict[str, int]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert (
            await sequencer.run_once(app.state.sessionmaker, settings, app.state.server_keys) == 0
        )
        engine = app.state.engine
        ids = list(load.creates)
        async with engine.connect() as conn:
            stored = await _stored(conn, ids)
            events = (
                await conn.execute(
                    text(
                        "SELECT resource_id, action, canonical FROM audit_event "
                        "WHERE resource_type = 'referral' AND outcome = 'ok' "
                        "AND action IN ('referral:create', 'referral:status') ORDER BY id"
                    )
                )
            ).all()
            db_status = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT referral_id, status FROM referral_recipient "
                            "WHERE recipient = :r"
                        ),
                        {"r": tf["legal"].agency_id},
                    )
                ).all()
            )
        problems: list[str] = []
        committed = set()
        for rid, outcome in load.creates.items():
            body = load.bodies[rid]
            rows = stored.get(rid)
            whole = rows is not None and rows == _expected(body)
            if rows is not None:
                committed.add(rid)
                if not whole:
                    problems.append(f"{rid} ({outcome}) is stored partially: {rows}")
            elif outcome == "201":
                problems.append(f"{rid} answered 201 but is not stored")
        creates = Counter(r for r, action, _ in events if action == "referral:create")
        for rid in set(ids) | set(creates):
            expected = 1 if rid in committed else 0
            if creates.get(rid, 0) != expected:
                problems.append(f"{rid}: {creates.get(rid, 0)} create events, expected {expected}")
        paths: dict[str, list[tuple[str, str]]] = {}
        for rid, action, canonical in events:
            detail = json.loads(canonical)["detail"]
            if action == "referral:status" and not detail.get("unchanged"):
                paths.setdefault(rid, []).append((detail["from"], detail["to"]))
        for rid in committed:
            current = "requested"
            for before, after in paths.get(rid, []):
                if before != current:
                    problems.append(f"{rid}: status event {before}->{after} after {current}")
                current = after
            if current != db_status.get(rid):
                problems.append(f"{rid}: events end at {current}, stored {db_status.get(rid)}")
        for rid, status, outcome in load.statuses:
            reached = STATUS_ORDER.index(db_status.get(rid, "requested"))
            if outcome == "200" and reached < STATUS_ORDER.index(status):
                problems.append(f"{rid}: status {status} answered 200 but stored is lower")
        problems += await _read_back(
            app, tf, load, sorted(r for r, o in load.creates.items() if o == "201")
        )
        assert not problems, "\n".join(problems[:40])
        await sequencer.run_once(app.state.sessionmaker, settings, app.state.server_keys)
        counts = await verify_audit_log(engine)
    return {
        "committed": len(committed),
        "committed_without_201": len(
            committed - {r for r, o in load.creates.items() if o == "201"}
        ),
        **counts,
    }


def _expected(body: dict[str, Any]) -> dict[str, Any]:
    disclosed = [envelope.parse_disclosure(d) for d in body["disclosures"]]
    kinds = Counter(d.kind for d in disclosed)
    fields = {d.value.fid: d.disclosure for d in disclosed if isinstance(d.value, FieldValue)}
    return {
        "fields": {fid: (fields[fid], c) for fid, c in body["ciphertexts"].items()},
        "grants": kinds["grant"],
        "wrapped": len(body["wrapped_keys"]),
        "recipients": kinds["request"],
    }


async def _stored(conn: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    """What the database holds of each referral id, in four set-based reads."""
    params = {"ids": ids}
    stmt = "SELECT id FROM referral WHERE id = ANY(:ids)"
    out: dict[str, dict[str, Any]] = {
        r: {"fields": {}, "grants": 0, "wrapped": 0, "recipients": 0}
        for (r,) in (await conn.execute(text(stmt), params)).all()
    }
    orphans: set[str] = set()
    for rid, fid, disclosure, ciphertext in (
        await conn.execute(
            text(
                "SELECT referral_id, fid, disclosure, ciphertext FROM referral_field "
                "WHERE referral_id = ANY(:ids)"
            ),
            params,
        )
    ).all():
        if rid in out:
            out[rid]["fields"][fid] = (disclosure, ciphertext)
        else:
            orphans.add(rid)
    for table, key in (
        ("referral_grant", "grants"),
        ("wrapped_key", "wrapped"),
        ("referral_recipient", "recipients"),
    ):
        for rid, n in (
            await conn.execute(
                text(
                    f"SELECT referral_id, count(*) FROM {table} "  # noqa: S608 (fixed names)
                    "WHERE referral_id = ANY(:ids) GROUP BY referral_id"
                ),
                params,
            )
        ).all():
            if rid in out:
                out[rid][key] = n
            else:
                orphans.add(rid)
    assert not orphans, f"rows without their referral: {orphans}"
    return out


async def _read_back(app: Any, tf: TaskForce, load: Load, created: list[str]) -> list[str]:
    """Read a sample of the 201s through the API, as the sender; all fields must be there."""
    problems = []
    headers = {"Authorization": f"Bearer {await tf.token('shelter', 'caseworker')}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for rid in random.Random(7).sample(created, min(25, len(created))):
            r = await client.get(f"/v1/referrals/{rid}", headers=headers)
            if r.status_code != 200:
                problems.append(f"{rid}: read back {r.status_code}")
            elif r.json()["ciphertexts"] != load.bodies[rid]["ciphertexts"]:
                problems.append(f"{rid}: read back other ciphertexts")
    return problems


async def _terminate_all(database: str) -> int:
    conn = await asyncpg.connect(PG_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await conn.close()
    return len(killed)


def _report(
    capsys: pytest.CaptureFixture[str], name: str, load: Load, extra: dict[str, Any]
) -> None:
    outcomes = dict(sorted(load.outcomes().items()))
    with capsys.disabled():
        print(  # noqa: T201 (the counts are part of the report)
            f"\nfault {name}: {sum(outcomes.values())} requests "
            f"({len(load.creates)} creates, {len(load.statuses)} status updates) {outcomes}; "
            + ", ".join(f"{k}={v}" for k, v in extra.items())
            + "; lost 0, partial 0"
        )
    # a request the fault cut short answers 503 (retry), never an anonymous 500
    assert "500" not in outcomes, outcomes


# ------------------------------------------------------------------ the tests


async def test_database_connections_killed_mid_load_lose_nothing(
    settings: Settings, seeded: TaskForce, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    database = str(settings.database_url).rsplit("/", 1)[1]
    killed: list[int] = []

    async def fault() -> None:
        killed.append(await _terminate_all(database))

    load = await _drive(server, seeded, fault, [CREATES // 4, CREATES // 2])
    assert len(killed) == 2
    assert sum(killed) > 0
    assert load.outcomes()["201"] > CREATES // 2, load.outcomes()
    caught_up = await _settled(settings)
    async with httpx.AsyncClient(base_url=server.url, timeout=5.0) as c:
        live = await c.get("/health/live")
        assert "server" not in live.headers
        created = await _metric_total(c, 'method="POST",route="/v1/referrals",status="201"')
    assert created == load.outcomes()["201"], "metrics lost requests across workers"
    counts = await _verify(settings, load, seeded)
    _report(
        capsys,
        "(a) pg_terminate_backend x2",
        load,
        {"sessions_killed": sum(killed), "sequencer_caught_up_s": round(caught_up, 1), **counts},
    )


RESTART = os.environ.get("REFGATE_TEST_RESTART_POSTGRES") == "1"


def _restart_postgres() -> None:
    """Restart the local cluster (fast shutdown: every session dies, in-flight
    transactions roll back). Only where asked to: it also drops any other run's sessions."""
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.serial  # the restart kills every session of every test running beside it
@pytest.mark.skipif(
    not RESTART or shutil.which("pg_ctlcluster") is None,
    reason="restarts the shared PostgreSQL cluster: set REFGATE_TEST_RESTART_POSTGRES=1 "
    "(.ci/run does) on a machine where nothing else uses it",
)
async def test_postgresql_restarted_mid_load_loses_nothing(
    settings: Settings, seeded: TaskForce, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    restarts: list[float] = []

    async def fault() -> None:
        started = time.monotonic()
        await asyncio.to_thread(_restart_postgres)
        restarts.append(time.monotonic() - started)

    load = await _drive(server, seeded, fault, [CREATES // 3])
    assert len(restarts) == 1
    assert load.outcomes()["201"] > CREATES // 3, load.outcomes()
    caught_up = await _settled(settings)
    counts = await _verify(settings, load, seeded)
    _report(
        capsys,
        "(a') PostgreSQL restarted (pg_ctlcluster restart -m fast)",
        load,
        {
            "restart_s": round(restarts[0], 1),
            "sequencer_caught_up_s": round(caught_up, 1),
            **counts,
        },
    )


async def _metric_total(client: httpx.AsyncClient, labels: str, within: float = 8.0) -> float:
    """The request counter, summed over every worker's snapshot (they flush within 2 s)."""
    deadline = time.monotonic() + within
    value = -1.0
    previous = -2.0
    while time.monotonic() < deadline:
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert r.status_code == 200, r.text
        line = next((x for x in r.text.splitlines() if labels in x and "_total{" in x), None)
        value = float(line.rsplit(" ", 1)[1]) if line else 0.0
        if value == previous:
            return value
        previous = value
        await asyncio.sleep(2.2)
    return value


async def test_a_worker_killed_mid_load_loses_nothing(
    settings: Settings, seeded: TaskForce, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    victims: list[int] = []

    async def fault() -> None:
        victim = server.workers()[0]
        os.kill(victim, signal.SIGKILL)
        victims.append(victim)

    load = await _drive(server, seeded, fault, [CREATES // 3])
    assert len(victims) == 1
    await _wait_ready(server, workers=2)  # uvicorn started a new worker
    assert victims[0] not in server.workers()
    caught_up = await _settled(settings)
    counts = await _verify(settings, load, seeded)
    _report(
        capsys,
        "(b) SIGKILL one of two workers",
        load,
        {"sequencer_caught_up_s": round(caught_up, 1), **counts},
    )
