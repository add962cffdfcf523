"""Everything the benchmark prepares before it measures anything.

- a fresh database, migrated by ``refgate-server migrate``;
- a task force seeded in-process through ``app.services.agencies``: four
  sending agencies and three recipients (shelter, legal aid, law enforcement),
  plus an auditor;
- N distinct signed Envelope v2 bodies (8 fields, about 4 KiB of ciphertext, 3
  recipients with per-field consent and one request each) built with
  ``seal_envelope`` in a process pool, so client-side crypto is never in the
  measured loop; status bodies are signed by the recipient's key the same way
  (``status_body``), just before the scenario that posts them;
- an audit log of a million events, loaded with COPY together with its Merkle
  leaves and nodes (``app.crypto.merkle.append_leaves``) and a signed checkpoint,
  exactly as the sequencer would have left it;
- a backlog of pending events for the sequencer scenario.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import string
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.client.assertion import client_assertion, token_form
from app.config import Settings
from app.crypto import envelope as env
from app.crypto import keys, merkle
from app.crypto.canonical import canonical_json
from app.db import create_engine, sessionmaker
from app.services import audit, sequencer
from app.services.audit import Actor
from app.services.demo import unsafe_onboard_generated
from app.services.server_keys import load_server_keys

SYSTEM = Actor(client_id=None, agency_id=None, role="system")
ROOT = Path(__file__).resolve().parent.parent

# Plaintext sizes: with the 24-byte nonce and 16-byte tag each, 4096 bytes of ciphertext.
FIELD_SIZES = {
    "full_name": 32,
    "date_of_birth": 10,
    "contact": 120,
    "language": 24,
    "narrative": 2500,
    "immigration_status": 240,
    "medical_needs": 400,
    "safety_concerns": 450,
}
# What the survivor consents to, per recipient: the shelter sees everything, legal
# aid what a case needs, the police unit only enough to act on a safety concern.
CONSENT = {
    "shelter": ("safety_planning", list(FIELD_SIZES)),
    "legal": (
        "service_provision",
        ["full_name", "date_of_birth", "contact", "language", "immigration_status"],
    ),
    "police": ("investigation", ["full_name", "date_of_birth", "safety_concerns"]),
}
SENDERS = {
    "intake": "social_service",
    "clinic": "medical",
    "outreach": "ngo",
    "hotline": "ngo",
}
RECIPIENTS = {"shelter": "shelter", "legal": "legal_aid", "police": "law_enforcement"}
# What each recipient is asked to do (the ``services`` of its request disclosure).
SERVICES = {
    "shelter": ["shelter", "safety_planning", "basic_needs", "interpretation"],
    "legal": ["legal", "immigration_legal", "victim_advocacy"],
    "police": ["investigation", "safety_planning"],
}
URGENCIES = ["routine", "routine", "urgent", "emergency"]


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ database


def plain_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def database_urls(admin_url: str, name: str) -> tuple[str, str]:
    """(asyncpg URL, SQLAlchemy URL) of database ``name`` on the admin URL's server."""
    base = plain_url(admin_url).rsplit("/", 1)[0]
    return f"{base}/{name}", f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"


async def _admin(admin_url: str, *sql: str) -> None:
    conn = await asyncpg.connect(plain_url(admin_url), timeout=10)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


def recreate_database(admin_url: str, name: str) -> None:
    asyncio.run(
        _admin(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}")
    )


def copy_database(admin_url: str, template: str, name: str) -> None:
    """``name`` as a file copy of ``template`` (which nobody may be connected to)."""
    asyncio.run(
        _admin(
            admin_url,
            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
            f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY",
        )
    )


def drop_database(admin_url: str, name: str) -> None:
    asyncio.run(_admin(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def postgres_reachable(admin_url: str) -> bool:
    try:
        asyncio.run(_admin(admin_url, "SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The process environment without anyone's REFGATE_* settings, plus ``extra``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("REFGATE_")}
    out.update(extra)
    return out


def migrate(sa_url: str, data_dir: Path) -> None:
    """``refgate-server migrate``, as an operator would run it."""
    subprocess.run(
        [sys.executable, "-m", "app.server_cli", "migrate"],
        cwd=ROOT,
        env=clean_env({"REFGATE_DATABASE_URL": sa_url, "REFGATE_DATA_DIR": str(data_dir)}),
        check=True,
        stdout=subprocess.DEVNULL,
    )


# ------------------------------------------------------------------ task force


@dataclass
class Client:
    client_id: str
    role: str
    auth_seed: bytes
    token: str = ""


@dataclass
class Member:
    name: str
    kind: str
    agency_id: str
    keys: keys.AgencyKeys
    clients: dict[str, Client] = field(default_factory=dict)


@dataclass
class TaskForce:
    members: dict[str, Member]

    @property
    def senders(self) -> list[Member]:
        return [self.members[n] for n in SENDERS]

    @property
    def recipients(self) -> list[Member]:
        return [self.members[n] for n in RECIPIENTS]

    def client(self, name: str, role: str) -> Client:
        return self.members[name].clients[role]

    def all_clients(self) -> Iterator[Client]:
        for m in self.members.values():
            yield from m.clients.values()


async def seed_task_force(settings: Settings) -> TaskForce:
    plan: list[tuple[str, str, list[str]]] = [(n, k, ["caseworker"]) for n, k in SENDERS.items()]
    plan += [(n, k, ["caseworker", "liaison"]) for n, k in RECIPIENTS.items()]
    plan.append(("office", "government", ["auditor"]))
    engine = create_engine(settings)
    members: dict[str, Member] = {}
    try:
        async with sessionmaker(engine)() as db, db.begin():
            for name, kind, roles in plan:
                onboarded = await unsafe_onboard_generated(
                    db, SYSTEM, name=f"bench {name}", kind=kind, roles=roles
                )
                member = Member(
                    name=name, kind=kind, agency_id=onboarded.agency_id, keys=onboarded.agency_keys
                )
                for role, (client_id, auth) in onboarded.clients.items():
                    member.clients[role] = Client(client_id, role, auth.seed)
                members[name] = member
    finally:
        await engine.dispose()
    return TaskForce(members)


async def mint_tokens(tf: TaskForce, http: httpx.AsyncClient, token_url: str) -> None:
    """An access token for every client of the task force (``Client.token``)."""
    for c in tf.all_clients():
        assertion = client_assertion(c.client_id, c.auth_seed, token_url)
        r = await http.post("/oauth/token", data=token_form(assertion))
        if r.status_code != 200:
            raise RuntimeError(f"token for {c.role} refused: {r.status_code} {r.text}")
        c.token = r.json()["access_token"]


def recipient_role(name: str) -> str:
    """The role that reads a recipient's inbox: a liaison for the police unit."""
    return "liaison" if RECIPIENTS[name] == "law_enforcement" else "caseworker"


# ------------------------------------------------------------------ envelopes

_ALPHABET = string.ascii_letters + string.digits + "     .,"


def _seal_batch(args: tuple[int, int, dict[str, Any]]) -> list[str]:
    """Build ``count`` envelopes in a worker process; returns them as JSON lines."""
    count, seed, spec = args
    rng = random.Random(seed)  # content only; keys and nonces come from the OS CSPRNG
    expires = rfc3339(datetime.now(UTC) + timedelta(days=90))
    grants = [
        env.Grant(
            field=f,
            recipient=r["agency_id"],
            enc_public=r["enc_public"],
            purpose=r["purpose"],
            expires_at=expires,
        )
        for r in spec["recipients"]
        for f in r["fields"]
    ]
    senders = spec["senders"]
    out: list[str] = []
    for i in range(count):
        s = senders[(seed + i) % len(senders)]
        fields = {
            name: "".join(rng.choices(_ALPHABET, k=size)) for name, size in FIELD_SIZES.items()
        }
        urgency = rng.choice(URGENCIES)
        requests = [
            env.Request(
                recipient=r["agency_id"],
                services=tuple(rng.sample(r["services"], k=2)),
                urgency=urgency,
                case_ref=f"case-{seed}-{i}",
            )
            for r in spec["recipients"]
        ]
        sealed = env.seal_envelope(
            referral_id=str(uuid.uuid4()),
            sender_agency=s["agency_id"],
            sender_sig_seed=s["sig_seed"],
            sender_enc_public=s["enc_public"],
            fields=fields,
            grants=grants,
            requests=requests,
            created_at=rfc3339(datetime.now(UTC)),
        )
        out.append(s["name"] + "\t" + json.dumps(sealed.body, separators=(",", ":")))
    return out


@dataclass(frozen=True)
class Envelope:
    sender: str  # task-force member name
    referral_id: str
    body: str  # one line of JSON


def build_envelopes(tf: TaskForce, count: int, workers: int) -> list[Envelope]:
    spec = {
        "senders": [
            {
                "name": m.name,
                "agency_id": m.agency_id,
                "sig_seed": m.keys.sig_seed,
                "enc_public": m.keys.enc_public,
            }
            for m in tf.senders
        ],
        "recipients": [
            {
                "agency_id": tf.members[name].agency_id,
                "enc_public": tf.members[name].keys.enc_public,
                "purpose": purpose,
                "fields": fields,
                "services": SERVICES[name],
            }
            for name, (purpose, fields) in CONSENT.items()
        ],
    }
    chunk = 200
    jobs = [(min(chunk, count - start), start, spec) for start in range(0, count, chunk)]
    lines: list[str] = []
    if workers <= 1 or len(jobs) == 1:
        for job in jobs:
            lines += _seal_batch(job)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for batch in pool.map(_seal_batch, jobs):
                lines += batch
    out = []
    for line in lines:
        sender, body = line.split("\t", 1)
        referral_id = json.loads(body)["manifest"]["referral_id"]
        out.append(Envelope(sender, referral_id, body))
    return out


def status_body(member: Member, referral_id: str, status: str, reason: str | None = None) -> str:
    """A recipient's signed ``POST /v1/referrals/{id}/status`` body, as one line of JSON.

    ``signed_at`` is now: the server refuses one more than its clock skew
    (five minutes) away, so build these just before the scenario that posts them.
    """
    body = env.sign_status(
        referral_id=referral_id,
        recipient=member.agency_id,
        status=status,
        reason=reason,
        note=None,
        signed_at=rfc3339(datetime.now(UTC)),
        sig_seed=member.keys.sig_seed,
    )
    return json.dumps(body, separators=(",", ":"))


# ------------------------------------------------------------------ audit log

ACTIONS = [  # (action, resource_type, weight)
    ("referral:read", "referral", 34),
    ("referral:list", "referral", 18),
    ("token:issue", "client", 15),
    ("referral:create", "referral", 10),
    ("referral:status", "referral", 10),
    ("audit:query", "audit_log", 3),
    ("access:denied", "route", 3),
    ("consent:revoke", "referral", 1),
    ("grant:add", "referral", 1),
    ("agency:read", "agency", 3),
    ("key:proof", "key", 2),
]


@dataclass(frozen=True)
class AuditPools:
    """The synthetic population behind the loaded events (used to build filters)."""

    agencies: list[str]
    actors: list[tuple[str, str, str]]  # (client_id, agency_id, role)
    referrals: list[tuple[str, str]]  # (referral_id, sender agency)
    first_ts: datetime
    last_ts: datetime
    size: int


def make_pools(n_events: int, seed: int = 5, last: datetime | None = None) -> AuditPools:
    """The synthetic population behind ``n_events`` events, ending at ``last`` (default
    an hour ago); the same ``seed`` and ``last`` give the same pools (a template's)."""
    rng = random.Random(seed)
    agency_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(60)]
    roles = ["caseworker", "caseworker", "liaison", "auditor"]
    actors = [
        (str(uuid.UUID(int=rng.getrandbits(128), version=4)), rng.choice(agency_ids), r)
        for r in (rng.choice(roles) for _ in range(300))
    ]
    refs = [
        (str(uuid.UUID(int=rng.getrandbits(128), version=4)), rng.choice(agency_ids))
        for _ in range(max(100, n_events // 20))
    ]
    if last is None:
        last = datetime.now(UTC) - timedelta(hours=1)
    return AuditPools(agency_ids, actors, refs, last - timedelta(days=365), last, n_events)


def _q(value: str | None) -> str:
    return "null" if value is None else '"' + value + '"'


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _event_rows(
    pools: AuditPools, start: int, count: int, total: int, rng: random.Random
) -> tuple[list[tuple[Any, ...]], list[bytes]]:
    """audit_event rows for ids start+1 .. start+count, and their leaf hashes.

    The event object has the members ``app.services.audit.build_event`` writes.
    Its RFC 8785 form is assembled from a template in sorted member order: every
    string here is plain ASCII without characters JSON escapes, and the small
    ``grant``/``detail`` objects are canonicalised once, so the result is
    byte-for-byte what ``app.crypto.canonical.canonical_json`` gives (checked on
    a sample by ``check_canonical``), about ten times faster.
    """
    actions = [a for a, _, _ in ACTIONS]
    types = {a: t for a, t, _ in ACTIONS}
    weights = [w for _, _, w in ACTIONS]
    span_us = int((pools.last_ts - pools.first_ts).total_seconds() * 1_000_000)
    first_naive = pools.first_ts.replace(tzinfo=None)
    # Audit events name fields by their opaque fid (base64url of 16 bytes), never by name.
    fids = [base64.urlsafe_b64encode(rng.randbytes(16)).decode().rstrip("=") for _ in range(256)]
    field_sets = [sorted(rng.sample(fids, k=3)) for _ in range(32)]
    reads = [
        (
            _canonical(
                {
                    f: {"expires_at": "2027-06-01T00:00:00Z", "purpose": "service_provision"}
                    for f in fs
                }
            ),
            _canonical({"fids": fs, "relation": "recipient", "version": 1}),
        )
        for fs in field_sets
    ]
    lists = [_canonical({"box": "received", "count": c}) for c in range(50)]
    create_detail = _canonical(
        {
            "fids": sorted(rng.sample(fids, k=len(FIELD_SIZES))),
            "recipients": sorted(pools.agencies[:3]),
        }
    )
    status_detail = _canonical({"to": "accepted"})
    denied_detail = _canonical({"reason": "not visible"})
    template = (
        '{"action":"%s","actor":"%s","actor_agency":"%s","detail":%s,"event_id":"%s",'
        '"grant":%s,"outcome":"%s","purpose":%s,"request_id":"%032x","resource_id":%s,'
        '"resource_type":"%s","role":"%s","subject_agency":%s,"ts":"%sZ"}'
    )
    rows: list[tuple[Any, ...]] = []
    leaves: list[bytes] = []
    picks = rng.choices(actions, weights=weights, k=count)
    randbits = rng.getrandbits
    for k in range(count):
        event_no = start + k
        offset = timedelta(microseconds=span_us * event_no // max(1, total))
        naive = first_naive + offset
        action = picks[k]
        rtype = types[action]
        actor, actor_agency, role = pools.actors[randbits(30) % len(pools.actors)]
        outcome = "ok"
        grant = "null"
        purpose: str | None = None
        resource_id: str | None = None
        subject: str | None = None
        if rtype == "referral" and action != "referral:list":
            resource_id, subject = pools.referrals[randbits(30) % len(pools.referrals)]
            if action == "referral:read":
                grant, detail = reads[randbits(5)]
                purpose = "service_provision"
            else:
                detail = create_detail if action == "referral:create" else status_detail
        elif action == "referral:list":
            detail = lists[randbits(30) % 50]
        elif action == "access:denied":
            outcome = "denied"
            resource_id = "GET /v1/referrals/{referral_id}"
            detail = denied_detail
        else:
            resource_id = actor if rtype == "client" else None
            subject = actor_agency
            detail = "{}"
        if outcome == "ok" and randbits(10) < 3:
            outcome = "error"
        event_id = str(uuid.UUID(int=randbits(128), version=4))
        canonical = template % (
            action,
            actor,
            actor_agency,
            detail,
            event_id,
            grant,
            outcome,
            _q(purpose),
            randbits(128),
            _q(resource_id),
            rtype,
            role,
            _q(subject),
            naive.isoformat(timespec="microseconds"),
        )
        rows.append(
            (
                event_no + 1,
                event_id,
                pools.first_ts + offset,
                canonical,
            )
        )
        leaves.append(merkle.leaf_hash(canonical.encode("utf-8")))
    return rows, leaves


def check_canonical(rows: Sequence[tuple[Any, ...]]) -> None:
    """Fail loudly if a generated event is not exactly its RFC 8785 form."""
    for row in rows:
        text = row[-1]
        if canonical_json(json.loads(text)).decode("utf-8") != text:
            raise AssertionError(f"generated event {row[0]} is not canonical JSON")


EVENT_COLUMNS = ["id", *audit.EVENT_COLUMNS]


async def _event_index_ddl(conn: asyncpg.Connection) -> tuple[list[str], list[str]]:
    """(drop, create) statements for audit_event's indexes other than its primary key."""
    constraints = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE conrelid = 'audit_event'::regclass AND contype = 'u'"
    )
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_event' "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint "
        "WHERE conrelid = 'audit_event'::regclass)"
    )
    drop = [f'ALTER TABLE audit_event DROP CONSTRAINT "{c["conname"]}"' for c in constraints]
    drop += [f'DROP INDEX "{i["indexname"]}"' for i in indexes]
    create = [
        f'ALTER TABLE audit_event ADD CONSTRAINT "{c["conname"]}" {c["def"]}' for c in constraints
    ]
    create += [i["indexdef"] for i in indexes]
    return drop, create


async def _defer_event_indexes(conn: asyncpg.Connection) -> list[str]:
    """Drop audit_event's secondary indexes for the bulk load (built again after it:
    one sort per index instead of a million random B-tree inserts)."""
    drop, create = await _event_index_ddl(conn)
    for statement in drop:
        await conn.execute(statement)
    return create


async def _restore_event_indexes(conn: asyncpg.Connection, create: list[str]) -> None:
    for statement in create:
        await conn.execute(statement)
    _, again = await _event_index_ddl(conn)
    if sorted(again) != sorted(create):
        raise RuntimeError("audit_event's indexes were not restored exactly")


async def load_audit_log(
    pg_url: str,
    settings: Settings,
    pools: AuditPools,
    chunk: int = 50_000,
    progress: Callable[[str], None] | None = None,
) -> float:
    """Load ``pools.size`` sequenced events into a fresh log and sign a checkpoint.

    Must run on an empty log before anything else writes events (ids and
    positions start at 1 and 0). Streams ``chunk`` events at a time (memory does
    not grow with the log's size); ``progress`` gets a line every million events
    and one per step after the COPY. Returns the seconds it took.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    rng = random.Random(11)
    conn = await asyncpg.connect(pg_url)
    try:
        size = 0
        frontier: list[bytes] = []
        head = await conn.fetchval("SELECT size FROM audit_tree_state WHERE id = 1")
        if head != 0 or await conn.fetchval("SELECT count(*) FROM audit_event"):
            raise RuntimeError("the audit log must be empty before the bulk load")
        deferred = await _defer_event_indexes(conn)
        await conn.execute("SET maintenance_work_mem = '256MB'")
        while size < pools.size:
            n = min(chunk, pools.size - size)
            rows, leaves = _event_rows(pools, size, n, pools.size, rng)
            if size == 0:
                check_canonical(rows[:500])
            nodes, frontier = merkle.append_leaves(size, frontier, leaves)
            async with conn.transaction():
                await conn.copy_records_to_table("audit_event", records=rows, columns=EVENT_COLUMNS)
                await sequencer.copy_tree_rows(conn, size, [r[0] for r in rows], leaves, nodes)
            size += n
            if progress is not None and (size % 1_000_000 == 0 or size == pools.size):
                secs = loop.time() - started
                progress(f"{size:,} events copied in {secs:.0f} s ({size / secs:,.0f}/s)")
        await _restore_event_indexes(conn, deferred)
        if progress is not None:
            progress(f"audit_event indexes rebuilt at {loop.time() - started:.0f} s")
        await conn.execute(
            "UPDATE audit_tree_state SET size = $1, root = $2, updated_at = now() WHERE id = 1",
            size,
            merkle.root_from_frontier(frontier),
        )
        await conn.execute("SELECT setval(pg_get_serial_sequence('audit_event', 'id'), $1)", size)
        for table in ("audit_event", "audit_leaf", "audit_node"):
            await conn.execute(f"VACUUM ANALYZE {table}")
        if progress is not None:
            progress(f"vacuumed and analyzed at {loop.time() - started:.0f} s")
    finally:
        await conn.close()
    engine = create_engine(settings)
    try:
        async with sessionmaker(engine)() as db, db.begin():
            await sequencer.sign_checkpoint(db, settings, load_server_keys(settings))
    finally:
        await engine.dispose()
    return loop.time() - started


async def load_backlog(pg_url: str, pools: AuditPools, count: int) -> None:
    """Append ``count`` committed but unsequenced events (audit_event + audit_pending)."""
    conn = await asyncpg.connect(pg_url)
    try:
        async with conn.transaction():
            start = await conn.fetchval("SELECT coalesce(max(id), 0) FROM audit_event")
            rows, _ = _event_rows(pools, start, count, start + count, random.Random(start))
            await conn.copy_records_to_table("audit_event", records=rows, columns=EVENT_COLUMNS)
            await conn.copy_records_to_table(
                "audit_pending", records=[(r[0],) for r in rows], columns=["event_id"]
            )
            await conn.execute(
                "SELECT setval(pg_get_serial_sequence('audit_event', 'id'), $1)", start + count
            )
        await conn.execute("ANALYZE audit_pending")
    finally:
        await conn.close()


async def time_sequencer(settings: Settings) -> tuple[int, float]:
    """Integrate everything pending with ``sequencer.run_once``: (events, seconds)."""
    engine = create_engine(settings)
    try:
        maker = sessionmaker(engine)
        server_keys = load_server_keys(settings)
        loop = asyncio.get_running_loop()
        started = loop.time()
        n = await sequencer.run_once(maker, settings, server_keys)
        return n, loop.time() - started
    finally:
        await engine.dispose()


async def drain_sequencer(settings: Settings) -> int:
    n, _ = await time_sequencer(settings)
    return n


def spread(items: Sequence[Any], k: int, rng: random.Random) -> list[Any]:
    """``k`` items, cycling through a shuffled copy when ``k`` exceeds ``len(items)``."""
    pool = list(items)
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(k)] if pool else []
