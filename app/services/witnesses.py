"""Getting checkpoints cosigned by witnesses (C2SP tlog-witness), and serving them.

The ``WitnessRunner`` (one per deployment, like the sequencer: a leader with
its own advisory lock) submits the newest signed checkpoint to every witness
in ``REFGATE_AUDIT__WITNESSES`` with a consistency proof from the size that
witness last cosigned. It runs beside the sequencer, never inside it: HTTP is
sent outside any transaction, each witness on its own, so a slow or dead
witness delays only its own cosignatures, never sequencing or a request.

Guarantees:
- Only cosignatures that verify with the witness's configured key over the
  exact note stored are kept (``checkpoint_cosignature``), and only they are
  served.
- The size a witness last cosigned is learned from its answers: a 200 for our
  checkpoint, or a 409 ``text/x.tlog.size`` (the first submission says
  ``old 0``, as the spec allows, and learns it). Nothing is lost while a
  witness is down: when it is back it gets the newest checkpoint with a proof
  from where it stopped. Failures back off exponentially with jitter up to
  ``audit.witness_retry_cap``.
- A witness that refuses with 422 (proof does not verify) or a 409 without a
  size (same size, other root) has seen another tree for our origin: that is
  logged as an error, since it means a split view or a rewritten log.

``GET /v1/audit/checkpoint`` answers the newest checkpoint with its stored
cosignatures appended as signature lines; ``?cosigned=K`` the newest one
with at least K, counting configured witnesses only (``cosigned_note``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

from app import __version__, dialect, errors
from app.config import AuditSettings, Settings, WitnessEndpoint
from app.crypto import merkle
from app.crypto.cosignature import (
    CosignatureError,
    append_signature_lines,
    parse_witness_vkey,
    verified_cosigners,
)
from app.models.tables import AuditCheckpoint, table_of
from app.models.types import utcnow
from app.models.witness_tables import CheckpointCosignature, WitnessState
from app.services.leader import LeaderRunner
from app.services.sequencer import load_nodes
from app.witness.protocol import SIZE_CONTENT_TYPE, request_body

log = logging.getLogger("refgate.witnesses")
ADVISORY_LOCK_KEY = 0x7265_6667_7774_6E  # "refgwtn", distinct from the sequencer's
USER_AGENT = f"refgate-witness-client/{__version__}"
MAX_SIZE_ANSWERS = 3  # 409s with a size followed in one attempt
MAX_RESPONSE_BYTES = 64 * 1024  # a few cosignature lines; anything bigger is not one
_rng = random.SystemRandom()


# ---------------------------------------------------------------- serving


async def cosigned_note(db: AsyncSession, settings: Settings, cosigned: int | None) -> tuple[
    AuditCheckpoint, str
]:
    """The checkpoint to serve and its note with the cosignatures appended.

    ``cosigned`` None or 0: the newest checkpoint (503 when none is signed
    yet). Otherwise the newest with at least that many cosignatures by
    configured witnesses (404 when there is none).
    """
    vkeys = [w.vkey for w in settings.audit.witnesses]
    if cosigned:
        size = await db.scalar(
            select(col(CheckpointCosignature.tree_size))
            .where(col(CheckpointCosignature.witness_vkey).in_(vkeys))
            .group_by(col(CheckpointCosignature.tree_size))
            .having(func.count() >= cosigned)
            .order_by(col(CheckpointCosignature.tree_size).desc())
            .limit(1)
        )
        if size is None:
            raise errors.NotFound(
                f"no checkpoint has {cosigned} witness cosignature(s) yet "
                f"({len(vkeys)} witness(es) configured); retry later, or ask the operator "
                "whether the witnesses are reachable",
                slug="not-cosigned",
            )
        cp = await db.get(AuditCheckpoint, size)
    else:
        cp = await db.scalar(
            select(AuditCheckpoint).order_by(col(AuditCheckpoint.tree_size).desc()).limit(1)
        )
    if cp is None:
        raise errors.ServiceUnavailable(
            "no checkpoint has been signed yet; retry shortly", headers={"Retry-After": "1"}
        )
    lines = (
        await db.scalars(
            select(col(CheckpointCosignature.line))
            .where(
                col(CheckpointCosignature.tree_size) == cp.tree_size,
                col(CheckpointCosignature.witness_vkey).in_(vkeys),
            )
            .order_by(col(CheckpointCosignature.witness_vkey))
        )
    ).all()
    return cp, append_signature_lines(cp.note, [line + "\n" for line in lines])


# ---------------------------------------------------------------- submitting


def backoff(failures: int, audit: AuditSettings) -> float:
    """Seconds before the next try after ``failures`` consecutive failures ("equal jitter")."""
    # ``failures`` has no upper bound (a witness can be down for days): past 1024 the
    # power overflowed a float; 2.0 ** 1000 still fits one and is far past any cap
    exponent = min(max(failures - 1, 0), 1000)
    delay = min(audit.witness_retry_cap, audit.witness_retry_base * 2.0**exponent)
    return delay / 2 + _rng.uniform(0, delay / 2)


@dataclass
class _Outcome:
    cosigned_size: int | None  # what we now know the witness last cosigned
    line: str | None = None  # the verified cosignature line, on success
    timestamp: int = 0
    error: str | None = None
    fork: bool = False


class WitnessClient:
    """Submits one checkpoint to one witness (no database access)."""

    def __init__(self, http: httpx.AsyncClient, endpoint: WitnessEndpoint) -> None:
        self.http = http
        self.endpoint = endpoint
        self.key = parse_witness_vkey(endpoint.vkey)
        self.url = endpoint.url.rstrip("/") + "/add-checkpoint"

    async def submit(
        self, maker: async_sessionmaker[AsyncSession], cp: AuditCheckpoint, known_size: int | None
    ) -> _Outcome:
        old = known_size or 0
        for _ in range(MAX_SIZE_ANSWERS):
            if old > cp.tree_size:
                return _Outcome(old, error=(
                    f"the witness cosigned size {old}, beyond our newest checkpoint "
                    f"{cp.tree_size}: the log was rolled back or another tree was shown to it"
                ), fork=True)
            async with maker() as db:
                proof = await _consistency(db, old, cp.tree_size)
            try:
                r = await self.http.post(
                    self.url,
                    content=request_body(old, proof, cp.note),
                    headers={"content-type": "text/plain", "user-agent": USER_AGENT},
                )
            except httpx.HTTPError as exc:
                return _Outcome(known_size, error=f"{type(exc).__name__}: {exc}"[:300])
            if len(r.content) > MAX_RESPONSE_BYTES:
                return _Outcome(known_size, error=f"answer over {MAX_RESPONSE_BYTES} bytes")
            if r.status_code == 200:
                return self._cosigned(cp, r.text, known_size)
            media = r.headers.get("content-type", "").split(";")[0].strip()
            if r.status_code == 409 and media == SIZE_CONTENT_TYPE:
                learned = _size_answer(r.text)
                if learned is None:
                    return _Outcome(known_size, error="409 with a malformed text/x.tlog.size body")
                old = known_size = learned
                continue
            fork = r.status_code in (409, 422)
            return _Outcome(known_size, error=f"HTTP {r.status_code}: {r.text[:200]}", fork=fork)
        return _Outcome(known_size, error="the witness kept changing its latest size")

    def _cosigned(self, cp: AuditCheckpoint, body: str, known: int | None) -> _Outcome:
        try:
            lines = [line + "\n" for line in body.splitlines() if line]
            found = verified_cosigners(append_signature_lines(cp.note, lines), [self.key.vkey])
        except CosignatureError as exc:
            return _Outcome(known, error=f"malformed cosignature response: {exc}"[:300])
        if not found:
            return _Outcome(
                known, error="no cosignature in the response verifies with the configured key"
            )
        return _Outcome(cp.tree_size, line=found[0].line, timestamp=found[0].timestamp)


def _size_answer(body: str) -> int | None:
    text = body.removesuffix("\n")
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        return None
    if len(text) > 19 or int(text) > 2**63 - 1:
        return None
    return int(text)


async def _consistency(db: AsyncSession, old: int, size: int) -> list[bytes]:
    nodes = await load_nodes(db, merkle.consistency_proof_coords(old, size))
    return merkle.consistency_proof(old, size, nodes)


async def _state(
    maker: async_sessionmaker[AsyncSession], endpoint: WitnessEndpoint
) -> WitnessState:
    async with maker() as db, db.begin():
        row = await db.get(WitnessState, endpoint.vkey)
        if row is None:  # two leaders overlapping for a moment may both get here
            now = utcnow()
            await db.execute(
                dialect.insert(db, table_of(WitnessState))
                .values(
                    witness_vkey=endpoint.vkey,
                    witness_name=parse_witness_vkey(endpoint.vkey).name,
                    url=endpoint.url,
                    failures=0,
                    consecutive_failures=0,
                    next_attempt_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing()
            )
            row = await db.get(WitnessState, endpoint.vkey)
        elif row.url != endpoint.url:
            row.url = endpoint.url
        if row is None:
            raise RuntimeError("witness_state row vanished while being created")
        return row


async def _record(
    maker: async_sessionmaker[AsyncSession],
    audit: AuditSettings,
    client: WitnessClient,
    cp: AuditCheckpoint,
    state: WitnessState,
    outcome: _Outcome,
) -> None:
    now = utcnow()
    values: dict[str, Any] = {"cosigned_size": outcome.cosigned_size, "updated_at": now}
    async with maker() as db, db.begin():
        if outcome.line is not None:
            exists = await db.get(CheckpointCosignature, (cp.tree_size, client.key.vkey))
            if exists is None:
                await db.execute(
                    insert(table_of(CheckpointCosignature)).values(
                        tree_size=cp.tree_size,
                        witness_vkey=client.key.vkey,
                        witness_name=client.key.name,
                        line=outcome.line,
                        timestamp=outcome.timestamp,
                        created_at=now,
                    )
                )
            values.update(
                cosigned_at=now, consecutive_failures=0, last_error=None, next_attempt_at=now
            )
        else:
            failures = state.consecutive_failures + 1
            values.update(
                failures=state.failures + 1,
                consecutive_failures=failures,
                last_error=(outcome.error or "failed")[:300],
                next_attempt_at=now + timedelta(seconds=backoff(failures, audit)),
            )
        await db.execute(
            update(WitnessState)
            .where(col(WitnessState.witness_vkey) == client.key.vkey)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    context = {"witness": client.key.name, "tree_size": cp.tree_size}
    if outcome.line is not None:
        log.info("checkpoint cosigned", extra=context)
    elif outcome.fork:
        log.error(f"witness refused our checkpoint as inconsistent: {outcome.error}", extra=context)
    else:
        log.warning(f"witness unreachable or refused: {outcome.error}", extra=context)


async def witness_once(
    maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    http: httpx.AsyncClient,
    *,
    force: bool = False,
) -> int:
    """Submit the newest checkpoint to every witness that is due and lacks it.

    Returns how many witnesses were contacted. ``force`` ignores backoff (tests,
    the ``sequence`` command).
    """
    audit = settings.audit
    if not audit.witnesses:
        return 0
    async with maker() as db:
        cp = await db.scalar(
            select(AuditCheckpoint).order_by(col(AuditCheckpoint.tree_size).desc()).limit(1)
        )
        if cp is None:
            return 0
        have = set(
            (
                await db.scalars(
                    select(col(CheckpointCosignature.witness_vkey)).where(
                        col(CheckpointCosignature.tree_size) == cp.tree_size
                    )
                )
            ).all()
        )
    now = utcnow()

    async def one(endpoint: WitnessEndpoint) -> bool:
        state = await _state(maker, endpoint)
        if endpoint.vkey in have or (not force and state.next_attempt_at > now):
            return False
        client = WitnessClient(http, endpoint)
        outcome = await client.submit(maker, cp, state.cosigned_size)
        await _record(maker, audit, client, cp, state, outcome)
        return True

    done = await asyncio.gather(*(one(w) for w in audit.witnesses))
    return sum(done)


def http_client(audit: AuditSettings) -> httpx.AsyncClient:
    """Bounded timeouts, no redirects, no proxies from the environment."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(audit.witness_timeout),
        follow_redirects=False,
        trust_env=False,
    )


class WitnessRunner(LeaderRunner):
    """Gets each new checkpoint cosigned, in the one leader worker."""

    name = "witness-client"
    lock_key = ADVISORY_LOCK_KEY

    def __init__(
        self, engine: AsyncEngine, maker: async_sessionmaker[AsyncSession], settings: Settings
    ) -> None:
        super().__init__(engine)
        self.maker = maker
        self.settings = settings
        self.http = http_client(settings.audit)

    async def stop(self) -> None:
        await super().stop()
        await self.http.aclose()

    def idle_seconds(self) -> float:
        return self.settings.audit.witness_poll_interval

    async def step(self) -> bool:
        await witness_once(self.maker, self.settings, self.http)
        return False


# ---------------------------------------------------------------- metrics


Gauge = tuple[str, str, tuple[tuple[str, str], ...], float]


async def gauges(conn: AsyncConnection) -> list[Gauge]:
    """Per-witness series for ``/metrics`` (read from ``witness_state``)."""
    rows = (
        await conn.execute(
            select(
                col(WitnessState.witness_name),
                col(WitnessState.cosigned_size),
                col(WitnessState.cosigned_at),
                col(WitnessState.failures),
                col(WitnessState.consecutive_failures),
            )
        )
    ).all()
    now = utcnow()
    out: list[Gauge] = []
    for name, size, at, failures, consecutive in sorted(rows, key=lambda r: str(r[0])):
        labels = (("witness", str(name)),)
        if size is not None:
            out.append(("refgate_witness_cosigned_tree_size",
                        "Tree size the witness last cosigned (or reported as its latest).",
                        labels, float(size)))
        if at is not None:
            out.append(("refgate_witness_cosigned_age_seconds",
                        "Seconds since the witness last returned a cosignature.",
                        labels, max((now - at).total_seconds(), 0.0)))
        out.append(("refgate_witness_failures", "Failed submissions to the witness, in total.",
                    labels, float(failures)))
        out.append(("refgate_witness_consecutive_failures",
                    "Failed submissions to the witness since its last success.",
                    labels, float(consecutive)))
    return out
