"""In-process CPU cost of the hot routes: a quick loop for working on them.

``python -m bench.micro [--profile SCENARIO] [--requests N]`` builds a fresh
PostgreSQL database and task force as the full harness does, runs the app in
this process (no HTTP server, no wrk) and drives each hot route through the
ASGI interface directly with a few concurrent tasks, reporting the process CPU
time per request and the CPU time the PostgreSQL backends serving it spent per
request (read from ``/proc``; the WAL writer and checkpointer are not counted).
The first number is the application's own work (FastAPI, refgate, SQLAlchemy,
asyncpg), the second PostgreSQL's for its statements; neither counts the
network stack: the numbers to watch while changing a hot path, minutes faster
than ``bench.run``. The ratios to the baseline come
only from ``bench.run``.

``--profile create`` (or inbox, open, status, proof, audit) prints a cProfile
of that scenario sorted by internal time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from app.config import Settings
from app.main import create_app
from bench import dataset
from bench.servers import RATE_LIMITS_RAISED

Call = tuple[str, str, str, bytes]  # method, path + query, token, body


async def _asgi(app: Any, method: str, target: str, token: str, body: bytes) -> tuple[int, bytes]:
    path, _, query = target.partition("?")
    headers = [(b"host", b"micro"), (b"content-length", str(len(body)).encode())]
    if token:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    if body:
        ctype = b"application/json" if body[:1] == b"{" else b"application/x-www-form-urlencoded"
        headers.append((b"content-type", ctype))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    status = 0
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def _drive(app: Any, calls: Sequence[Call], concurrency: int) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, failures) for ``calls`` run by ``concurrency`` tasks."""
    queue = list(reversed(calls))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        while queue:
            method, target, token, body = queue.pop()
            status, out = await _asgi(app, method, target, token, body)
            if status not in (200, 201):
                failures += 1
                if failures <= 3:
                    print(f"  {method} {target} -> {status} {out[:300]!r}")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - cpu, time.perf_counter() - wall, failures


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _backend_cpu(admin: str, database: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to ``database``.

    Only the backends serving the app's connections: not the WAL writer, the
    checkpointer or autovacuum, whose work a statement also causes.
    """
    import asyncpg

    conn = await asyncpg.connect(dataset.plain_url(admin))
    try:
        pids = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    finally:
        await conn.close()
    return {r["pid"]: _proc_cpu(r["pid"]) for r in pids}


async def run(args: argparse.Namespace) -> None:
    admin = os.environ.get(
        "REFGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = os.environ.get("REFGATE_MICRO_DB", "refgate_micro")
    await asyncio.to_thread(dataset.recreate_database, admin, name)
    _, sa_url = dataset.database_urls(admin, name)
    data_dir = Path(tempfile.mkdtemp(prefix="refgate-micro-"))
    await asyncio.to_thread(dataset.migrate, sa_url, data_dir)
    env = {
        "REFGATE_ENV": "production",
        "REFGATE_PUBLIC_URL": "http://micro",
        "REFGATE_DATABASE_URL": sa_url,
        "REFGATE_DATA_DIR": str(data_dir),
        "REFGATE_AUTH__ACCESS_TOKEN_TTL": "3600",
        "REFGATE_AUDIT__SEQUENCER_ENABLED": "true",
        "REFGATE_RATELIMIT__ENABLED": "false" if args.no_rate_limit else "true",
        **RATE_LIMITS_RAISED,
    }
    os.environ.update(env)
    settings = Settings()
    tf = await dataset.seed_task_force(settings)
    n = args.requests
    envelopes = await asyncio.to_thread(dataset.build_envelopes, tf, n + 50, 2)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://micro") as http:
            await dataset.mint_tokens(tf, http, "http://micro/oauth/token")

        def recipient(k: int) -> str:
            return list(dataset.RECIPIENTS)[k % 3]

        def recipient_token(k: int) -> str:
            name = recipient(k)
            return tf.client(name, dataset.recipient_role(name)).token

        warm = [
            ("POST", "/v1/referrals", tf.client(e.sender, "caseworker").token, e.body.encode())
            for e in envelopes[:50]
        ]
        await _drive(app, warm, args.concurrency)
        ids = [e.referral_id for e in envelopes[50:]]
        rng = random.Random(3)
        scenarios: dict[str, list[Call]] = {
            "create": [
                ("POST", "/v1/referrals", tf.client(e.sender, "caseworker").token, e.body.encode())
                for e in envelopes[50:]
            ],
            "inbox": [("GET", "/v1/referrals?limit=50", recipient_token(k), b"") for k in range(n)],
            "open": [("GET", f"/v1/referrals/{ids[k]}", recipient_token(k), b"") for k in range(n)],
            "status": [
                (
                    "POST",
                    f"/v1/referrals/{ids[k // 3]}/status",
                    recipient_token(k),
                    # signed by the recipient's key now (client-side work, not measured)
                    dataset.status_body(
                        tf.members[recipient(k)], ids[k // 3], "accepted"
                    ).encode(),
                )
                for k in range(n)
            ],
            "proof": [],
            # the fixed cost of a request: middleware, routing, token check, no statement
            "base": [
                ("GET", "/v1/audit/log-key", tf.client("office", "auditor").token, b"")
                for _ in range(n)
            ],
            "audit": [
                ("GET", "/v1/audit/events?limit=100", tf.client("office", "auditor").token, b"")
                for _ in range(n // 4)
            ],
        }
        wanted = args.only.split(",") if args.only else list(scenarios)
        if "create" not in wanted:  # the other scenarios read and update these referrals
            await _drive(app, scenarios["create"], args.concurrency)
        for key in wanted:
            calls = scenarios[key]
            if key == "proof":
                await asyncio.sleep(2)  # let the sequencer integrate what the runs wrote
                calls = [
                    (
                        "GET",
                        f"/v1/audit/proof/inclusion?seq={rng.randint(1, 100)}",
                        tf.client("office", "auditor").token,
                        b"",
                    )
                    for _ in range(n)
                ]
            profiler = cProfile.Profile() if args.profile == key else None
            spy = _start_py_spy(args.py_spy, key) if args.py_spy_scenario == key else None
            if profiler:
                profiler.enable()
            pg_before = await _backend_cpu(admin, name)
            cpu, wall, failures = await _drive(app, calls, args.concurrency)
            pg_after = await _backend_cpu(admin, name)
            pg_cpu = sum(t - pg_before.get(pid, 0.0) for pid, t in pg_after.items())
            if profiler:
                profiler.disable()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            print(
                f"{key:8s} {len(calls):5d} req  {cpu / len(calls) * 1000:6.2f} CPU ms/req  "
                f"PostgreSQL backends {pg_cpu / len(calls) * 1000:5.2f} ms/req  "
                f"{len(calls) / wall:7.0f} req/s (in-process)  failures {failures}"
            )
            if profiler:
                stats = pstats.Stats(profiler)
                stats.sort_stats(args.sort).print_stats(args.top)


def _start_py_spy(out: str, key: str) -> subprocess.Popen[bytes]:
    """py-spy this process (raw collapsed stacks to ``out``) until sent SIGINT."""
    cmd = ["py-spy", "record", "--pid", str(os.getpid()), "-r", "400", "-f", "raw", "-o", out]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let it attach
    print(f"py-spy on {key} -> {out} (summarise with python -m bench.profile {out})")
    return spy


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--only", help="comma-separated scenarios")
    p.add_argument("--profile", help="cProfile this scenario")
    p.add_argument("--py-spy", metavar="FILE", help="py-spy the scenario given by --spy-on")
    p.add_argument("--spy-on", dest="py_spy_scenario", help="scenario to py-spy")
    p.add_argument("--sort", default="tottime")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--no-rate-limit", action="store_true")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
