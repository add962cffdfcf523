"""Benchmark refgate against a raw FastAPI + asyncpg baseline, in one run.

    python -m bench.run [--smoke] [--duration S] [--connections 32] [--out bench/results]

Against PostgreSQL (admin URL from ``REFGATE_TEST_POSTGRES_URL``): migrate a
fresh database, load a million audit events, seed a task force, pre-build
signed envelopes; measure the baseline (insert, read); start refgate
(``refgate-server serve --workers 2``) and measure create, inbox, open, status,
audit query and inclusion proof while sampling the workers' memory; stop it
and time the sequencer on a backlog; measure the baseline again (full runs).
Writes ``results.json`` and ``results.md`` under ``--out/<timestamp>/``.
Exits 0 when the harness worked, whatever the verdicts (``--strict``: 1 when
a target is short), 2 when it did not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.config import AuditSettings, Settings
from app.services.server_keys import load_server_keys
from bench import dataset, load, report, servers
from bench.baseline_app import TABLE_SQL
from bench.load import LoadResult, Request

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Plan:
    duration: float
    connections: int
    threads: int
    workers: int
    events: int
    backlog: int
    envelopes: int
    probe_duration: float
    warmup: float
    min_referrals: int
    baseline_twice: bool
    rate_fraction: float = 0.25


FULL = Plan(
    duration=20,
    connections=32,
    threads=1,
    workers=2,
    events=1_000_000,
    backlog=200_000,
    envelopes=8_000,
    probe_duration=10,
    warmup=3,
    min_referrals=1_000,
    baseline_twice=True,
)
SMOKE = Plan(
    duration=1,
    connections=4,
    threads=1,
    workers=2,
    events=2_000,
    backlog=2_000,
    envelopes=400,  # more than 1 s of creates can use, so the bodies never run out
    probe_duration=1,
    warmup=0,
    min_referrals=12,
    baseline_twice=False,
)


REFERRAL_TABLES = (
    "referral",
    "referral_field",
    "referral_recipient",
    "referral_grant",
    "wrapped_key",
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=dataset.ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _wrk_version() -> str | None:
    if not load.wrk_available():
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip()


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        base = SMOKE if args.smoke else FULL
        self.plan = Plan(
            duration=args.duration if args.duration is not None else base.duration,
            connections=args.connections if args.connections is not None else base.connections,
            threads=args.threads,
            workers=args.workers,
            events=args.events if args.events is not None else base.events,
            backlog=args.backlog if args.backlog is not None else base.backlog,
            envelopes=args.envelopes if args.envelopes is not None else base.envelopes,
            probe_duration=base.probe_duration if args.duration is None else args.duration / 2,
            warmup=base.warmup,
            min_referrals=base.min_referrals,
            baseline_twice=base.baseline_twice and not args.single_baseline,
            rate_fraction=args.rate_fraction,
        )
        self.args = args
        self.smoke = args.smoke
        if args.driver == "auto":
            self.driver = "wrk" if load.wrk_available() else "python"
        else:
            self.driver = args.driver
        if self.driver == "wrk" and not load.wrk_available():
            raise SystemExit("wrk is not installed (apt-get install -y wrk) or use --driver python")
        self.admin_url = os.environ.get("REFGATE_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)
        self.db_name = args.database or (
            f"refgate_bench_smoke_{os.getpid()}" if self.smoke else "refgate_bench"
        )
        self.pg_url, self.sa_url = dataset.database_urls(self.admin_url, self.db_name)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.out = Path(args.out).resolve() / (stamp + ("-smoke" if self.smoke else ""))
        self.out.mkdir(parents=True, exist_ok=True)
        self.req_dir = self.out / "requests"
        self.req_dir.mkdir(exist_ok=True)
        self.data_dir = self.out / "data"
        self.settings = Settings(
            env="test",
            database_url=self.sa_url,
            data_dir=self.data_dir,
            audit=AuditSettings(sequencer_enabled=False),
        )
        self.rows: list[dict[str, Any]] = []
        self.baseline_runs: dict[str, list[float]] = {"insert": [], "read": []}
        self.rng = random.Random(5)
        self.profile_dir = self.out / "profile" if args.profile else None

    # ---------------------------------------------------------------- helpers

    def measure(
        self,
        key: str,
        server: servers.Server,
        requests: list[Request],
        *,
        connections: int | None = None,
        duration: float | None = None,
        once: bool = False,
    ) -> LoadResult:
        conns = connections or self.plan.connections
        secs = duration or self.plan.duration
        path = load.write_requests(self.req_dir / f"{key}.tsv", requests)
        load1 = os.getloadavg()[0]
        profiler = None
        if self.profile_dir is not None and server.name == "refgate":
            profiler = servers.Profiler(server.proc.pid, self.profile_dir, key, secs)
        cpu_before = servers.cpu_seconds(server.proc.pid)
        result = load.run_load(
            self.driver,
            server.base_url,
            path,
            connections=conns,
            duration=secs,
            threads=self.plan.threads,
            once=once,
        )
        cpu = servers.cpu_seconds(server.proc.pid) - cpu_before
        if profiler is not None:
            profiler.wait()
        if result.raw:
            (self.out / f"wrk-{key}.txt").write_text(result.raw)
        row = result.as_dict()
        row.update(
            key=key,
            label=self.label(key),
            load1_before=round(load1, 2),
            server_cpu_s=round(cpu, 2),
            cpu_ms_per_request=round(cpu * 1000 / result.requests, 2) if result.requests else None,
        )
        self.rows.append(row)
        log(
            f"{key}: {result.rps:,.0f} req/s, {row['cpu_ms_per_request']} CPU ms/req, "
            f"p50 {result.latency_ms['p50']} ms, "
            f"p99 {result.latency_ms['p99']} ms, failures {result.failures} {result.statuses}"
        )
        return result

    def label(self, key: str) -> str:
        return report.label(key, events=self.plan.events, rate_fraction=self.plan.rate_fraction)

    def measure_rate(
        self,
        route: str,
        server: servers.Server,
        requests: list[Request],
        max_rps: float,
        *,
        once: bool = False,
    ) -> load.ConstantRateResult | None:
        """``route`` at a fixed rate, ``rate_fraction`` of the maximum ``max_rps`` just measured.

        Open loop (``bench.openloop``): latency from each request's intended send
        time, at the same number of keep-alive connections as the closed-loop run.
        """
        if self.plan.rate_fraction <= 0:
            return None
        key = f"{route}_rate"
        rate = max(1.0, round(max_rps * self.plan.rate_fraction, 1))
        secs = self.plan.duration
        path = load.write_requests(self.req_dir / f"{key}.tsv", requests)
        load1 = os.getloadavg()[0]
        cpu_before = servers.cpu_seconds(server.proc.pid)
        result = load.run_constant_rate(
            server.base_url,
            path,
            rate=rate,
            duration=secs,
            connections=self.plan.connections,
            once=once,
        )
        cpu = servers.cpu_seconds(server.proc.pid) - cpu_before
        (self.out / f"openloop-{key}.txt").write_text(result.raw)
        row = result.as_dict()
        row.update(
            key=key,
            label=self.label(key),
            max_rps=round(max_rps, 1),
            rate_fraction=self.plan.rate_fraction,
            load1_before=round(load1, 2),
            server_cpu_s=round(cpu, 2),
            cpu_ms_per_request=round(cpu * 1000 / result.requests, 2) if result.requests else None,
        )
        self.rows.append(row)
        kept = "kept" if result.schedule_kept else f"NOT KEPT ({result.schedule_note})"
        log(
            f"{key}: {rate:,.1f} req/s scheduled ({self.plan.rate_fraction:.0%} of "
            f"{max_rps:,.0f}), sent {result.sent:,}/{result.scheduled:,}, "
            f"p50 {result.latency_ms['p50']} ms, p99 {result.latency_ms['p99']} ms "
            f"(service p99 {result.service_ms['p99']} ms), driver lag p99 "
            f"{result.driver_lag_ms['p99']} ms, schedule {kept}, "
            f"failures {result.failures} {result.statuses}"
        )
        return result

    def _unsent_envelopes(self, needed: int) -> list[dataset.Envelope]:
        """Envelopes no scenario has sent yet, sealing more if fewer than ``needed`` are left."""
        # Requests the closed-loop driver left in flight when it stopped are still
        # being served: wait until the referral count stops moving (a body sent
        # twice would be a 409, a failure of the next run).
        deadline = time.monotonic() + 30
        count = -1
        while time.monotonic() < deadline:
            now = self.sql("SELECT count(*) FROM referral")[0][0]
            if now == count:
                break
            count = now
            time.sleep(1.0)
        sent = {row["id"] for row in self.sql("SELECT id FROM referral")}
        left = [e for e in self.envelopes if e.referral_id not in sent]
        if len(left) < needed:
            left += self.seal(needed - len(left))
        return left

    def warm(self, server: servers.Server, key: str, requests: list[Request]) -> None:
        if self.plan.warmup <= 0:
            return
        path = load.write_requests(self.req_dir / f"warmup-{key}.tsv", requests)
        load.run_load(
            self.driver,
            server.base_url,
            path,
            connections=self.plan.connections,
            duration=self.plan.warmup,
            threads=self.plan.threads,
        )

    async def _sql(self, query: str, *params: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.pg_url)
        try:
            return list(await conn.fetch(query, *params))
        finally:
            await conn.close()

    def sql(self, query: str, *params: Any) -> list[asyncpg.Record]:
        return asyncio.run(self._sql(query, *params))

    # ---------------------------------------------------------------- phases

    def prepare(self) -> None:
        if self.args.events_from:
            self.copy_events_template(self.args.events_from)
        else:
            self.load_events()
        self.tf = asyncio.run(dataset.seed_task_force(self.settings))
        self.sql(TABLE_SQL)
        # The baseline cycles through its bodies (it gives each row its own id).
        self.baseline_bodies = self.seal(min(1000, self.plan.envelopes))
        sizes = [len(e.body) for e in self.baseline_bodies[:50]]
        self.body_bytes = sum(sizes) // len(sizes)

    def load_events(self) -> None:
        """A fresh, migrated database with ``--events`` sequenced audit events."""
        log(f"database {self.db_name}: create and migrate")
        dataset.recreate_database(self.admin_url, self.db_name)
        dataset.migrate(self.sa_url, self.data_dir)
        load_server_keys(self.settings)
        self.pools = dataset.make_pools(self.plan.events)
        log(f"loading {self.plan.events:,} sequenced audit events")
        secs = asyncio.run(
            dataset.load_audit_log(self.pg_url, self.settings, self.pools, progress=log)
        )
        log(f"audit log loaded in {secs:.0f} s")
        self.load_seconds = secs

    def save_events_template(self) -> Path:
        """``--save-events-template``: load the events, keep the database as a template.

        Beside it, under ``--out``, go the server keys that signed its checkpoint and
        the end of its synthetic population, which ``--events-from`` needs to reuse it.
        """
        self.load_events()
        keep = Path(self.args.out).resolve() / f"template-{self.db_name}"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(self.data_dir, keep / "data")
        (keep / "template.json").write_text(
            json.dumps(
                {
                    "database": self.db_name,
                    "events": self.plan.events,
                    "last_ts": self.pools.last_ts.isoformat(),
                    "events_load_s": round(self.load_seconds, 1),
                    "events_from": self.args.events_from,
                "warm_cache": bool(self.args.warm_cache),
                    "commit": _git("rev-parse", "HEAD"),
                },
                indent=2,
            )
            + "\n"
        )
        return keep

    def copy_events_template(self, template: str) -> None:
        """``--events-from``: this run's database as a file copy of a saved template."""
        keep = Path(self.args.out).resolve() / f"template-{template}"
        meta = json.loads((keep / "template.json").read_text())
        if meta["events"] != self.plan.events:
            n = meta["events"]
            raise SystemExit(f"{template} holds {n:,} events: pass --events {n}")
        log(f"database {self.db_name}: a copy of {template} ({meta['events']:,} events)")
        started = time.monotonic()
        dataset.copy_database(self.admin_url, template, self.db_name)
        shutil.copytree(keep / "data", self.data_dir, dirs_exist_ok=True)
        load_server_keys(self.settings)
        if self.args.warm_cache:
            self.warm_cache(template)
        last = datetime.fromisoformat(meta["last_ts"])
        self.pools = dataset.make_pools(self.plan.events, last=last)
        self.load_seconds = float(meta["events_load_s"])
        log(f"copied in {time.monotonic() - started:.0f} s (loaded in {self.load_seconds:.0f} s)")

    def warm_cache(self, template: str) -> None:
        """``--warm-cache``: the page cache holds this run's database, not the template's.

        After the copy both are half in the operating system's cache, so a large
        log would be read from disk at random. This drops the template's files from
        the cache (``posix_fadvise``, needs read access to PostgreSQL's data
        directory) and reads every table and index of the copy (``pg_prewarm``), as
        a server that has run a while with a log that fits in memory would have it.
        """
        started = time.monotonic()
        rows = self.sql(
            "SELECT current_setting('data_directory') AS dir, oid FROM pg_database "
            "WHERE datname = $1",
            template,
        )
        evicted = 0
        for path in (Path(rows[0]["dir"]) / "base" / str(rows[0]["oid"])).iterdir():
            with path.open("rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                evicted += path.stat().st_size
        self.sql("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        blocks = self.sql(
            "SELECT coalesce(sum(pg_prewarm(c.oid, 'read')), 0) AS blocks FROM pg_class c "
            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i')"
        )[0]["blocks"]
        log(
            f"page cache: {evicted / 2**30:.1f} GiB of {template} dropped, "
            f"{blocks * 8 / 2**20:.1f} GiB of {self.db_name} read in "
            f"{time.monotonic() - started:.0f} s"
        )

    def seal(self, count: int) -> list[dataset.Envelope]:
        log(f"sealing {count:,} envelopes")
        started = time.monotonic()
        out = dataset.build_envelopes(self.tf, count, workers=min(2, os.cpu_count() or 1))
        log(f"sealed in {time.monotonic() - started:.0f} s")
        return out

    def baseline(self, round_no: int) -> None:
        port = servers.free_port()
        log(f"baseline (round {round_no}) on :{port}")
        server = servers.start_baseline(
            self.pg_url, port, self.plan.workers, self.out / f"baseline-{round_no}.log"
        )
        try:
            inserts = [Request("POST", "/items", "", e.body) for e in self.baseline_bodies]
            self.warm(server, "baseline_insert", inserts)
            r = self.measure("baseline_insert", server, inserts)
            self.rows[-1]["round"] = round_no
            self.baseline_runs["insert"].append(r.rps)
            ids = [
                row["id"]
                for row in self.sql("SELECT id FROM baseline_item ORDER BY random() LIMIT 5000")
            ]
            reads = [Request("GET", f"/items/{i}") for i in ids]
            self.warm(server, "baseline_read", reads)
            r = self.measure("baseline_read", server, reads)
            self.rows[-1]["round"] = round_no
            self.baseline_runs["read"].append(r.rps)
        finally:
            server.stop()

    async def _mint_tokens(self, base_url: str) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            await dataset.mint_tokens(self.tf, http, base_url + "/oauth/token")

    async def _top_up(self, base_url: str, have: int) -> None:
        """Send more referrals (outside any measurement) when the create run left too few."""
        extra = dataset.build_envelopes(self.tf, self.plan.min_referrals - have, workers=1)
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            for e in extra:
                token = self.tf.client(e.sender, "caseworker").token
                r = await http.post(
                    "/v1/referrals",
                    content=e.body,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json",
                    },
                )
                if r.status_code != 201:
                    raise RuntimeError(f"top-up referral refused: {r.status_code} {r.text[:300]}")

    def _recipient_token(self, name: str) -> str:
        return self.tf.client(name, dataset.recipient_role(name)).token

    def refgate(self) -> None:
        port = servers.free_port()
        log(f"refgate (serve --workers {self.plan.workers}) on :{port}")
        server = servers.start_refgate(
            self.sa_url,
            self.data_dir,
            port,
            self.plan.workers,
            self.out / "refgate.log",
            rate_limit=not self.args.no_rate_limit,
        )
        log("refgate is up")
        sampler = servers.RssSampler(server.proc.pid)
        sampler.start()
        try:
            asyncio.run(self._mint_tokens(server.base_url))
            log("tokens minted")
            self._refgate_scenarios(server)
        finally:
            self.rss = sampler.stop()
            gone = [pid for pid, v in self.rss.items() if v["exited"]]
            if gone:
                log(f"refgate workers {', '.join(gone)} exited during the run (replaced)")
            server.stop()

    def _refgate_scenarios(self, server: servers.Server) -> None:
        tf = self.tf
        recipients = list(dataset.RECIPIENTS)
        # Sealed now, not at the start: the server refuses a created_at more than
        # five minutes old, and each body is a new referral (sent at most once).
        self.envelopes = self.seal(self.plan.envelopes)
        directory = [
            Request("GET", f"/v1/agencies/{m.agency_id}", self._recipient_token(r))
            for r in recipients
            for m in tf.members.values()
        ]
        self.warm(server, "directory", directory)
        creates = [
            Request("POST", "/v1/referrals", tf.client(e.sender, "caseworker").token, e.body)
            for e in self.envelopes
        ]
        r = self.measure("create", server, creates, once=True)
        if self.plan.rate_fraction > 0:
            rate = max(1.0, r.rps * self.plan.rate_fraction)
            # every scheduled create needs a body of its own, plus a margin
            fresh = self._unsent_envelopes(math.ceil(rate * self.plan.duration * 1.05) + 8)
            token = {name: tf.client(name, "caseworker").token for name in dataset.SENDERS}
            more = [Request("POST", "/v1/referrals", token[e.sender], e.body) for e in fresh]
            self.measure_rate("create", server, more, r.rps, once=True)

        ids = [row["id"] for row in self.sql("SELECT id FROM referral")]
        if len(ids) < self.plan.min_referrals:
            asyncio.run(self._top_up(server.base_url, len(ids)))
            ids = [row["id"] for row in self.sql("SELECT id FROM referral")]
        self.rng.shuffle(ids)
        # What autovacuum would have done by now on a production server (this
        # machine's PostgreSQL runs with autovacuum off): without statistics on
        # tables that grew from empty, the planner picks plans for empty tables.
        self.sql(f"ANALYZE {', '.join(REFERRAL_TABLES)}")

        queries = ["", "?urgency=urgent", "?status=requested", "?limit=20", "?box=received"]
        inbox = [
            Request("GET", "/v1/referrals" + q, tf.client(r, role).token)
            for r in recipients
            for role in ("caseworker", "liaison")
            for q in queries
        ]
        self.rng.shuffle(inbox)
        r = self.measure("inbox", server, inbox)
        self.measure_rate("inbox", server, inbox, r.rps)

        opens = [
            Request("GET", f"/v1/referrals/{rid}", self._recipient_token(recipients[i % 3]))
            for i, rid in enumerate(ids[:6000])
        ]
        r = self.measure("open", server, opens)
        self.measure_rate("open", server, opens, r.rps)

        r = self.measure("status", server, self._status_requests(ids))
        if self.plan.rate_fraction > 0:
            # fresh bodies (signed_at must be recent), every pair back to in-progress
            self.measure_rate("status", server, self._status_requests(ids), r.rps)

        self._audit_scenarios(server)

    def _status_requests(self, ids: list[str]) -> list[Request]:
        """Each recipient toggles its referrals in-progress <-> on-hold (always valid).

        The referrals are moved to in-progress first (setup, in SQL). The file
        lists every (referral, recipient) pair with on-hold, then every pair with
        in-progress, a multiple of the wrk thread count long, so each pair keeps
        to one thread and alternates.
        """
        per = max(1, min(len(ids), 4000) // 3)
        pairs = [
            (rid, name)
            for k, name in enumerate(dataset.RECIPIENTS)
            for rid in ids[k * per : (k + 1) * per]
        ]
        pairs = pairs[: len(pairs) - len(pairs) % max(1, self.plan.threads)]
        agency = {n: self.tf.members[n].agency_id for n in dataset.RECIPIENTS}
        self.sql(
            "UPDATE referral_recipient SET status = 'in-progress', updated_at = now() "
            "FROM unnest($1::text[], $2::text[]) AS p(rid, ag) "
            "WHERE referral_id = p.rid AND recipient = p.ag",
            [p[0] for p in pairs],
            [agency[p[1]] for p in pairs],
        )
        out = []
        for status in ("on-hold", "in-progress"):  # signed now: signed_at must be recent
            out += [
                Request(
                    "POST",
                    f"/v1/referrals/{rid}/status",
                    self._recipient_token(n),
                    dataset.status_body(self.tf.members[n], rid, status),
                )
                for rid, n in pairs
            ]
        return out

    def _audit_filters(self) -> list[str]:
        p = self.pools
        rng = random.Random(7)

        def ts(dt: datetime) -> str:
            return dt.strftime("%Y-%m-%dT%H:%M:%SZ")

        out = []
        for _ in range(30):
            agency = rng.choice(p.agencies)
            actor = rng.choice(p.actors)[0]
            ref = rng.choice(p.referrals)[0]
            start = p.first_ts + timedelta(days=rng.uniform(0, 350))
            out += [
                f"?agency={agency}",
                f"?agency={agency}&action=referral:read",
                f"?actor={actor}",
                f"?resource_id={ref}",
                "?outcome=denied",
                f"?action=referral:create&since={ts(p.last_ts - timedelta(days=30))}",
                f"?agency={agency}&since={ts(start)}&until={ts(start + timedelta(days=7))}",
                "?action=consent:revoke",
            ]
        rng.shuffle(out)
        return out

    def _audit_scenarios(self, server: servers.Server) -> None:
        auditor = self.tf.client("office", "auditor").token
        queries = [Request("GET", "/v1/audit/events" + f, auditor) for f in self._audit_filters()]
        self.measure("audit_query", server, queries)
        self.measure(
            "audit_query_probe",
            server,
            queries,
            connections=1,
            duration=self.plan.probe_duration,
        )
        rng = random.Random(9)
        proofs = [
            Request(
                "GET", f"/v1/audit/proof/inclusion?seq={rng.randrange(self.plan.events)}", auditor
            )
            for _ in range(2000)
        ]
        self.measure("inclusion_proof", server, proofs)
        self.measure(
            "inclusion_proof_probe",
            server,
            proofs,
            connections=1,
            duration=self.plan.probe_duration,
        )

    def sequencer(self) -> None:
        drained = asyncio.run(dataset.drain_sequencer(self.settings))
        log(f"sequencer: drained {drained:,} events left by the run; loading a backlog")
        asyncio.run(dataset.load_backlog(self.pg_url, self.pools, self.plan.backlog))
        load1 = os.getloadavg()[0]
        if self.profile_dir is not None:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            n, secs = asyncio.run(dataset.time_sequencer(self.settings))
            prof.disable()
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            with (self.profile_dir / "sequencer-cprofile.txt").open("w") as fh:
                pstats.Stats(prof, stream=fh).sort_stats("cumulative").print_stats(40)
        else:
            n, secs = asyncio.run(dataset.time_sequencer(self.settings))
        rate = n / secs if secs else 0.0
        log(f"sequencer: {n:,} events in {secs:.2f} s = {rate:,.0f} events/s")
        target = report.TARGETS["sequencer"]
        assert target.min_rate is not None
        self.rows.append(
            {
                "key": "sequencer",
                "label": self.label("sequencer"),
                "rps": rate,
                "unit": "events/s",
                "events": n,
                "seconds": round(secs, 3),
                "batch_size": self.settings.audit.batch_size,
                "failures": 0 if n == self.plan.backlog else abs(self.plan.backlog - n),
                "target": target.describe(),
                "verdict": "pass"
                if rate >= target.min_rate and n == self.plan.backlog
                else "short",
                "load1_before": round(load1, 2),
            }
        )

    # ---------------------------------------------------------------- results

    def results(self) -> dict[str, Any]:
        baselines = {k: sum(v) / len(v) for k, v in self.baseline_runs.items() if v}
        for row in self.rows:
            if row["key"] == "sequencer":
                continue
            ratio, target, verdict = report.evaluate(row["key"], row, baselines)
            tgt = report.TARGETS.get(row["key"])
            row.update(
                ratio=ratio,
                ratio_of=tgt.baseline if tgt else None,
                target=target,
                verdict=verdict,
            )
        rss_target = report.TARGETS["rss"].max_mb
        assert rss_target is not None
        version = self.sql("SHOW server_version")[0][0]
        return {
            "meta": {
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "commit": _git("rev-parse", "--short=12", "HEAD"),
                "dirty": bool(_git("status", "--porcelain")),
                "smoke": self.smoke,
                "driver": self.driver,
                "wrk": _wrk_version(),
                "connections": self.plan.connections,
                "threads": self.plan.threads,
                "duration_s": self.plan.duration,
                "probe_duration_s": self.plan.probe_duration,
                "workers": self.plan.workers,
                "rate_limiter": "off" if self.args.no_rate_limit else "on, limits raised",
                "events": self.plan.events,
                "events_load_s": round(self.load_seconds, 1),
                "events_from": self.args.events_from,
                "warm_cache": bool(self.args.warm_cache),
                "rate_fraction": self.plan.rate_fraction,
                "backlog": self.plan.backlog,
                "envelopes": len(self.envelopes),
                "body_bytes": self.body_bytes,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "postgres": version,
                "kernel": platform.release(),
                "load1_end": round(os.getloadavg()[0], 2),
                # the harness process itself (the event load streams: it does not grow with N)
                "harness_peak_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
            },
            "baseline_rps": {k: round(v, 1) for k, v in baselines.items()},
            "baseline_runs": self.baseline_runs,
            "rows": self.rows,
            "rss": {
                "workers": self.rss,
                "verdicts": {
                    pid: ("pass" if v["vm_hwm_mb"] <= rss_target else "short")
                    for pid, v in self.rss.items()
                },
            },
        }

    def run(self) -> dict[str, Any]:
        self.prepare()
        self.baseline(1)
        self.refgate()
        self.sequencer()
        if self.plan.baseline_twice:
            self.baseline(2)
        results = self.results()
        (self.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (self.out / "results.md").write_text(report.markdown(results))
        if self.profile_dir is not None:
            from bench.profile import summarize

            for key in {p.name.rsplit("-", 1)[0] for p in self.profile_dir.glob("*-*.txt")}:
                files = sorted(self.profile_dir.glob(f"{key}-[0-9]*.txt"))
                if files:
                    (self.profile_dir / f"{key}.summary").write_text(summarize(files))
        return results

    def cleanup(self) -> None:
        if not self.args.keep_requests:
            shutil.rmtree(self.req_dir, ignore_errors=True)
        if self.smoke and not self.args.database:
            dataset.drop_database(self.admin_url, self.db_name)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few seconds, tiny N (CI)")
    p.add_argument("--duration", type=float, help="seconds per scenario (full: 20)")
    p.add_argument("--connections", type=int, help="concurrent connections (full: 32)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--workers", type=int, default=2, help="server workers (default 2)")
    p.add_argument(
        "--events",
        type=int,
        help="sequenced audit events preloaded for the audit query and inclusion proof "
        "(full: 1,000,000; 10,000,000 for the reference run, see README)",
    )
    p.add_argument(
        "--save-events-template",
        action="store_true",
        help="only load the --events into --database and keep it, with its keys under --out, "
        "for --events-from (the 10M reference run: load once, measure when the machine is idle)",
    )
    p.add_argument(
        "--events-from",
        metavar="DATABASE",
        help="start from a copy of a database saved by --save-events-template instead of loading",
    )
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="with --events-from: drop the template from the page cache and read the copy "
        "into it (pg_prewarm), as a server running a while would have its log",
    )
    p.add_argument("--backlog", type=int, help="pending events for the sequencer (full: 200,000)")
    p.add_argument("--envelopes", type=int, help="envelopes to pre-build (full: 8,000)")
    p.add_argument(
        "--rate-fraction",
        type=float,
        default=0.25,
        help="constant-rate runs of create, inbox, open and status at this fraction of "
        "each route's measured maximum (default 0.25; 0 skips them)",
    )
    p.add_argument("--out", default="bench/results", help="results directory")
    p.add_argument("--driver", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--database", help="database name (default refgate_bench)")
    p.add_argument("--single-baseline", action="store_true", help="measure the baseline once")
    p.add_argument(
        "--no-rate-limit",
        action="store_true",
        help="run refgate with its rate limiter off (default: on, limits raised out of reach)",
    )
    p.add_argument("--profile", action="store_true", help="py-spy the workers (slows them)")
    p.add_argument("--keep-requests", action="store_true", help="keep the request files")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is short")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.save_events_template and not args.database:
        raise SystemExit("--save-events-template needs --database NAME")
    runner = Runner(args)
    if args.save_events_template:
        keep = runner.save_events_template()
        log(f"database {runner.db_name} kept as a template; its keys in {keep}")
        return 0
    log(f"driver {runner.driver}, results in {runner.out}")
    try:
        results = runner.run()
    except Exception:  # the harness itself failed: say where, exit 2
        traceback.print_exc()
        log("harness failed")
        return 2
    finally:
        runner.cleanup()
    print(report.markdown(results), end="")
    print(f"results: {runner.out / 'results.json'}")
    short = [r["key"] for r in results["rows"] if r.get("verdict") in ("short", "invalid")]
    short += [f"rss {pid}" for pid, v in results["rss"]["verdicts"].items() if v == "short"]
    if short:
        log("short of target: " + ", ".join(short))
    return 1 if args.strict and short else 0


if __name__ == "__main__":
    sys.exit(main())
