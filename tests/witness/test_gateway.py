"""The gateway with a real witness on a real port (gateway database on both backends).

The witness runs in-process under uvicorn with its own SQLite state; the
gateway's runner reaches it over HTTP exactly as it would reach one run by
another organization.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text

from app.client.audit_verify import verify_log
from app.config import AuditSettings, Settings, WebhookSettings, WitnessEndpoint
from app.crypto import checkpoint, keys, merkle
from app.crypto.cosignature import CosignatureQuorumError, verify_cosignatures, witness_vkey
from app.main import create_app
from app.services import witnesses
from app.services.server_keys import load_server_keys
from app.witness.service import WitnessConfig, create_witness_app, trusted_logs
from migrations import append_only
from tests.taskforce import TaskForce

WITNESS = "oversight.example.org/witness"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningWitness:
    """``refgate-server witness`` in-process: start, stop, start again on the same port."""

    def __init__(self, config: WitnessConfig, port: int) -> None:
        self.config = config
        self.port = port
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = uvicorn.Config(
            create_witness_app(self.config), host="127.0.0.1", port=self.port,
            log_level="warning", lifespan="on",
        )
        self.server = uvicorn.Server(cfg)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the witness did not start"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await self.task
        self.server = self.task = None


@pytest.fixture
def witness_port() -> int:
    return _free_port()


@pytest.fixture
def witness_seed() -> bytes:
    return keys.generate_signing_key().seed


@pytest.fixture
def wvkey(witness_seed: bytes) -> str:
    return witness_vkey(WITNESS, keys.sig_public_from_seed(witness_seed))


@pytest.fixture
def settings(database_url: str, tmp_path: Path, witness_port: int, wvkey: str) -> Settings:
    return Settings(
        env="test",
        data_dir=tmp_path / "data",
        database_url=database_url,
        audit=AuditSettings(
            sequencer_enabled=False,
            checkpoint_interval=0,
            witnesses=[WitnessEndpoint(url=f"http://127.0.0.1:{witness_port}", vkey=wvkey)],
            witness_timeout=2,
            witness_retry_base=0.05,
            witness_retry_cap=0.2,
            witness_poll_interval=0.05,
        ),
        webhooks=WebhookSettings(dispatcher_enabled=False),
    )


@pytest.fixture
def log_vkey(settings: Settings) -> str:
    server_keys = load_server_keys(settings)  # the same key files the app will read
    return checkpoint.verifier_key(settings.audit.log_origin, server_keys.log_public)


@pytest.fixture
async def witness(
    witness_seed: bytes, witness_port: int, log_vkey: str, tmp_path: Path
) -> AsyncIterator[RunningWitness]:
    (tmp_path / "witness").mkdir()
    config = WitnessConfig(
        name=WITNESS, seed=witness_seed,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'witness' / 'witness.db'}",
        logs=trusted_logs([log_vkey]),
    )
    running = RunningWitness(config, witness_port)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def auditor(app: Any, tf: TaskForce) -> AsyncIterator[httpx.AsyncClient]:
    headers = await tf.headers("office", "auditor")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers
    ) as c:
        yield c


async def _witness_now(app: Any) -> int:
    http = witnesses.http_client(app.state.settings.audit)
    async with http:
        return await witnesses.witness_once(
            app.state.sessionmaker, app.state.settings, http, force=True
        )


async def _more_events(client: httpx.AsyncClient, tf: TaskForce, n: int = 2) -> None:
    for _ in range(n):
        r = await client.get("/v1/agencies", headers=await tf.headers("legal"))
        assert r.status_code == 200, r.text


async def _checkpoint_sizes(app: Any) -> list[int]:
    async with app.state.engine.connect() as conn:
        rows = await conn.execute(text("SELECT tree_size FROM audit_checkpoint ORDER BY tree_size"))
        return [int(r[0]) for r in rows]


async def test_checkpoints_are_cosigned_and_served_with_their_cosignatures(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient,
    witness: RunningWitness, wvkey: str, log_vkey: str,
) -> None:
    await tf.sequence()
    assert await _witness_now(app) == 1
    r = await auditor.get("/v1/audit/checkpoint")
    assert r.status_code == 200
    cp = checkpoint.open_checkpoint(r.text, log_vkey)
    assert verify_cosignatures(r.text, [wvkey], 1) == [WITNESS]
    # newer checkpoints: the witness gets each with a proof from its last size
    for _ in range(3):
        await _more_events(client, tf)
        await tf.sequence()
        assert await _witness_now(app) == 1
    newest = await auditor.get("/v1/audit/checkpoint", params={"cosigned": 1})
    assert newest.status_code == 200
    assert checkpoint.open_checkpoint(newest.text, log_vkey).size > cp.size
    assert verify_cosignatures(newest.text, [wvkey], 1) == [WITNESS]
    # nothing new to cosign: the witness is not asked again
    assert await _witness_now(app) == 0
    # a quorum nobody configured reaches: 404 problem+json
    none = await auditor.get("/v1/audit/checkpoint", params={"cosigned": 2})
    assert none.status_code == 404
    assert none.headers["content-type"] == "application/problem+json"
    assert "2 witness cosignature" in none.json()["detail"]
    gauges = {g[0]: g[3] for g in await _gauges(app)}
    assert gauges["refgate_witness_cosigned_tree_size"] == float(
        checkpoint.open_checkpoint(newest.text, log_vkey).size
    )
    assert gauges["refgate_witness_failures"] == 0
    exposition = await app.state.metrics.render(app.state.engine)
    assert f'refgate_witness_cosigned_age_seconds{{witness="{WITNESS}"}}' in exposition


async def _gauges(app: Any) -> list[witnesses.Gauge]:
    async with app.state.engine.connect() as conn:
        return await witnesses.gauges(conn)


async def test_a_newest_checkpoint_not_yet_cosigned_is_served_without_and_k_finds_older(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient,
    witness: RunningWitness, wvkey: str, log_vkey: str,
) -> None:
    await tf.sequence()
    await _witness_now(app)
    cosigned = checkpoint.open_checkpoint(
        (await auditor.get("/v1/audit/checkpoint")).text, log_vkey
    )
    await _more_events(client, tf)
    await tf.sequence()
    newest = (await auditor.get("/v1/audit/checkpoint")).text
    assert checkpoint.open_checkpoint(newest, log_vkey).size > cosigned.size
    with pytest.raises(CosignatureQuorumError):
        verify_cosignatures(newest, [wvkey], 1)
    older = (await auditor.get("/v1/audit/checkpoint", params={"cosigned": 1})).text
    assert checkpoint.open_checkpoint(older, log_vkey).size == cosigned.size


async def test_runner_learns_the_witness_size_from_409(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient,
    witness: RunningWitness, wvkey: str,
) -> None:
    await tf.sequence()
    await _witness_now(app)
    # the gateway forgets what it knew of the witness (e.g. a restored backup)
    async with app.state.engine.begin() as conn:
        await conn.execute(text("DELETE FROM witness_state"))
    await _more_events(client, tf)
    await tf.sequence()
    assert await _witness_now(app) == 1  # old 0 -> 409 with the size -> resubmitted
    note = (await auditor.get("/v1/audit/checkpoint")).text
    assert verify_cosignatures(note, [wvkey], 1) == [WITNESS]


async def _fork(app: Any, at: int) -> None:
    """The operator rewrites leaf ``at`` and rebuilds the tree for the same origin
    (superuser: triggers dropped), then signs new checkpoints over the fork."""
    engine = app.state.engine
    dialect = engine.dialect.name
    async with engine.begin() as conn:
        leaves = [bytes(r[0]) for r in await conn.execute(
            text("SELECT leaf_hash FROM audit_leaf ORDER BY seq"))]
        leaves[at] = merkle.leaf_hash(b'{"rewritten":true}')
        nodes, frontier = merkle.append_leaves(0, [], leaves)
        for stmt in append_only.drop(dialect):
            await conn.execute(text(stmt))
        await conn.execute(text("DELETE FROM audit_node"))
        await conn.execute(
            text("INSERT INTO audit_node (level, idx, hash) VALUES (:l, :i, :h)"),
            [{"l": lv, "i": ix, "h": h} for lv, ix, h in nodes],
        )
        await conn.execute(text("UPDATE audit_leaf SET leaf_hash = :h WHERE seq = :s"),
                           {"h": leaves[at], "s": at})
        await conn.execute(text("UPDATE audit_tree_state SET root = :r"),
                           {"r": merkle.root_from_frontier(frontier)})
        for stmt in append_only.install(dialect):
            await conn.execute(text(stmt))


async def test_split_view_fork_is_refused_by_the_witness_and_by_a_quorum_of_one(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient,
    witness: RunningWitness, wvkey: str, log_vkey: str, caplog: pytest.LogCaptureFixture,
) -> None:
    await tf.sequence()
    await _witness_now(app)
    honest = checkpoint.open_checkpoint(
        (await auditor.get("/v1/audit/checkpoint", params={"cosigned": 1})).text, log_vkey
    )
    await _fork(app, at=2)
    await _more_events(client, tf)
    await tf.sequence()  # signs a checkpoint over the forked tree, with the real log key
    forked_note = (await auditor.get("/v1/audit/checkpoint")).text
    forked = checkpoint.open_checkpoint(forked_note, log_vkey)  # the log key alone accepts it
    assert forked.size > honest.size
    with caplog.at_level(logging.ERROR, logger="refgate.witnesses"):
        assert await _witness_now(app) == 1
    assert any("inconsistent" in r.getMessage() for r in caplog.records)
    # no cosignature for the fork was stored or served
    with pytest.raises(CosignatureQuorumError) as caught:
        verify_cosignatures(forked_note, [wvkey], 1)
    assert caught.value.missing == [WITNESS]
    served = (await auditor.get("/v1/audit/checkpoint", params={"cosigned": 1})).text
    assert checkpoint.open_checkpoint(served, log_vkey).size == honest.size
    gauges = {g[0]: g[3] for g in await _gauges(app)}
    assert gauges["refgate_witness_failures"] >= 1
    assert gauges["refgate_witness_cosigned_tree_size"] == honest.size
    # the CLI verifier with quorum 1 refuses the fork as the newest checkpoint too
    out = io.StringIO()
    report = await verify_log(
        auditor, state_file=Path(app.state.settings.data_dir) / "state.json",
        log_key=log_vkey, witnesses=[wvkey], quorum=1, out=out,
    )
    assert report.ok, out.getvalue()  # it is served the honest, cosigned checkpoint
    assert report.tree_size == honest.size
    assert report.cosigned_by == [WITNESS]


async def test_audit_verify_reports_cosigners_and_fails_without_quorum(
    app: Any, tf: TaskForce, auditor: httpx.AsyncClient, witness: RunningWitness,
    wvkey: str, log_vkey: str, tmp_path: Path,
) -> None:
    await tf.sequence()
    await _witness_now(app)
    out = io.StringIO()
    report = await verify_log(auditor, state_file=tmp_path / "s.json", log_key=log_vkey,
                              witnesses=[wvkey], quorum=1, out=out)
    assert report.ok, out.getvalue()
    assert f"cosigned by 1 of 1 trusted witness(es) (quorum 1): {WITNESS}" in out.getvalue()
    other = witness_vkey("other.example/w", keys.sig_public_from_seed(bytes(32)))
    out = io.StringIO()
    report = await verify_log(auditor, state_file=tmp_path / "s2.json", log_key=log_vkey,
                              witnesses=[other], quorum=1, out=out)
    assert not report.ok
    # the server has no checkpoint cosigned by that witness: ?cosigned=1 finds ours, which
    # the verifier does not count
    assert "FAIL: witness cosignatures: checkpoint has 0 valid witness cosignature(s)" in (
        out.getvalue()
    )
    out = io.StringIO()
    report = await verify_log(auditor, state_file=tmp_path / "s3.json", log_key=log_vkey,
                              witnesses=[wvkey], quorum=2, out=out)
    assert not report.ok
    assert "needs at least 2 distinct --witness keys" in out.getvalue()


async def _until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_witness_down_blocks_nothing_and_cosigning_resumes(
    settings: Settings, witness_seed: bytes, witness_port: int, log_vkey: str, wvkey: str,
    tmp_path: Path,
) -> None:
    live = settings.model_copy(update={"audit": settings.audit.model_copy(update={
        "sequencer_enabled": True, "poll_interval": 0.05, "checkpoint_interval": 0,
    })})
    app = create_app(live)
    (tmp_path / "witness").mkdir()
    config = WitnessConfig(
        name=WITNESS, seed=witness_seed,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'witness' / 'witness.db'}",
        logs=trusted_logs([log_vkey]),
    )
    running = RunningWitness(config, witness_port)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            tf = await TaskForce.create(app, client)
            headers = await tf.headers("office", "auditor")
            # the witness is down: requests are served at once, sequencing goes on
            sizes_seen = []
            for _ in range(5):
                started = time.monotonic()
                await _more_events(client, tf, 1)
                assert time.monotonic() - started < 2
                await asyncio.sleep(0.2)
                sizes_seen.append(max(await _checkpoint_sizes(app), default=-1))
            assert sizes_seen[-1] > sizes_seen[0]

            async def failing() -> bool:
                gauges = {g[0]: g[3] for g in await _gauges(app)}
                return gauges.get("refgate_witness_consecutive_failures", 0) >= 2

            await _until(failing, 10, "the runner to record failures")
            r = await client.get("/v1/audit/checkpoint", params={"cosigned": 1}, headers=headers)
            assert r.status_code == 404
            # the witness comes back: the newest checkpoint gets cosigned
            await running.start()
            try:
                async def cosigned() -> bool:
                    r = await client.get("/v1/audit/checkpoint", params={"cosigned": 1},
                                         headers=headers)
                    return r.status_code == 200

                await _until(cosigned, 15, "a cosignature after the witness came back")
                await _more_events(client, tf, 1)

                async def caught_up() -> bool:  # read directly: API reads are events too
                    async with app.state.engine.connect() as conn:
                        cosigned_max = (await conn.execute(text(
                            "SELECT max(tree_size) FROM checkpoint_cosignature"))).scalar()
                    return cosigned_max == (await _checkpoint_sizes(app))[-1]

                await _until(caught_up, 15, "the witness to cosign the newest checkpoint")
                gauges = {g[0]: g[3] for g in await _gauges(app)}
                assert gauges["refgate_witness_consecutive_failures"] == 0
                assert gauges["refgate_witness_failures"] >= 2
                r = await client.get("/v1/audit/checkpoint", params={"cosigned": 1},
                                     headers=headers)
                assert verify_cosignatures(r.text, [wvkey], 1) == [WITNESS]
            finally:
                await running.stop()
            # no checkpoint was lost: every one signed during the outage is still there
            sizes = await _checkpoint_sizes(app)
            assert {s for s in sizes_seen if s >= 0} <= set(sizes)
            assert sizes == sorted(set(sizes))


async def test_a_witness_that_never_answers_delays_nothing(
    settings: Settings, witness_port: int, tmp_path: Path
) -> None:
    """A witness that accepts connections and then hangs: the runner waits out its
    timeout in its own task while requests are served and checkpoints signed."""
    hung: list[asyncio.StreamWriter] = []

    async def hang(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)

    server = await asyncio.start_server(hang, "127.0.0.1", witness_port)
    live = settings.model_copy(update={"audit": settings.audit.model_copy(update={
        "sequencer_enabled": True, "poll_interval": 0.05, "checkpoint_interval": 0,
        "witness_timeout": 5,
    })})
    app = create_app(live)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                tf = await TaskForce.create(app, client)
                first = max(await _checkpoint_sizes(app), default=-1)
                for _ in range(8):
                    started = time.monotonic()
                    await _more_events(client, tf, 1)
                    assert time.monotonic() - started < 1
                    await asyncio.sleep(0.1)

                async def grew() -> bool:
                    return max(await _checkpoint_sizes(app), default=-1) > first

                await _until(grew, 5, "checkpoints while the witness hangs")
                assert hung, "the runner did contact the hanging witness"
    finally:
        server.close()
        for writer in hung:
            writer.close()
        await server.wait_closed()


async def test_server_sequence_command_also_asks_the_witnesses(
    app: Any, witness: RunningWitness, wvkey: str, witness_port: int,
    server_cli_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from app.config import get_settings
    from app.server_cli import main

    monkeypatch.setenv("REFGATE_AUDIT__WITNESSES", json.dumps(
        [{"url": f"http://127.0.0.1:{witness_port}", "vkey": wvkey}]))
    get_settings.cache_clear()
    assert await asyncio.to_thread(main, ["sequence"]) == 0
    assert "submitted to 1 witness(es)" in capsys.readouterr().out
    async with app.state.engine.connect() as conn:
        lines = (await conn.execute(text("SELECT line FROM checkpoint_cosignature"))).all()
    assert len(lines) == 1


async def test_a_client_pinning_a_quorum_refuses_a_checkpoint_its_witnesses_did_not_cosign(
    app: Any, client: httpx.AsyncClient, tf: TaskForce, auditor: httpx.AsyncClient,
    witness: RunningWitness, wvkey: str, log_vkey: str, tmp_path: Path,
) -> None:
    """The SDK's pin store holds the witness key and a quorum of one: the operator who
    forks the log and serves the fork (ignoring ``?cosigned=``) is refused."""
    from app.client.errors import WitnessQuorumError
    from app.client.transparency import Pins, Transparency

    await tf.sequence()
    await _witness_now(app)

    def raise_for(response: httpx.Response) -> None:
        assert response.status_code < 400, response.text

    async def honest(path: str, params: Any) -> httpx.Response:
        return await auditor.get(path, params=params)

    pins = Pins(log_key=log_vkey, witnesses=[wvkey], quorum=1, path=tmp_path / "k.pins.json")
    accepted = await Transparency(honest, raise_for, pins=pins).checkpoint()
    assert pins.size == accepted.size

    await _fork(app, at=1)
    await _more_events(client, tf)
    await tf.sequence()
    await _witness_now(app)  # the witness refuses the fork
    forked_note = (await auditor.get("/v1/audit/checkpoint")).text

    async def lying(path: str, params: Any) -> httpx.Response:
        if path == "/v1/audit/checkpoint":
            return httpx.Response(200, text=forked_note)
        return await auditor.get(path, params=params)

    fresh = Pins(log_key=log_vkey, witnesses=[wvkey], quorum=1, path=tmp_path / "f.pins.json")
    with pytest.raises(WitnessQuorumError, match="not cosigned by enough of the witnesses"):
        await Transparency(lying, raise_for, pins=fresh).checkpoint()
    assert fresh.size is None, "nothing was pinned"
