"""Directory search probe: GET /v1/directory/services over 5,000 services, one connection.

Seeds a fresh PostgreSQL database (migrated with ``refgate-server migrate``)
with 250 agencies publishing 20 services each (random categories, languages,
populations, accepting states and capacity times), starts ``refgate-server``
(one worker, as ``bench.servers`` does), and sends searches one after the other
on one keep-alive connection: every filter alone, the CLI's combined
``find --service shelter --language es --population women --accepting``, a text
search, and the second page of a cursor. It prints the latency percentiles per
query and overall (target: p95 <= 20 ms) and the SQL plan of the combined query.

    .venv/bin/python -m bench.directory_probe [--services 5000] [--requests 300]
        [--admin-url postgresql://postgres@127.0.0.1:5432/postgres] [--sqlite]

``--sqlite`` runs the same against the embedded SQLite database instead.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.client.assertion import client_assertion, token_form
from app.config import Settings
from app.db import create_engine, sessionmaker
from app.models.directory_schemas import ServiceIn
from app.services import directory
from app.services.demo import unsafe_onboard_generated
from app.vocab import Accepting, CapacityUnit, Population, Service
from bench import dataset, servers

SYSTEM = dataset.SYSTEM
LANGUAGES = ["en", "es", "es-MX", "fr", "fa-AF", "zh-Hant", "ar", "ru", "uk", "pt-BR", "vi", "tl"]
QUERIES = {
    "no filter": {},
    "category": {"category": "shelter"},
    "language": {"language": "es"},
    "population": {"population": "women"},
    "accepting": {"accepting": "yes"},
    "find shelter es women accepting": {
        "category": "shelter", "language": "es", "population": "women", "accepting": "yes",
    },
    "text": {"q": "trauma"},
    "rare combination": {"category": "childcare", "language": "tl", "population": "lgbtq"},
}


def _service(rng: random.Random, i: int) -> ServiceIn:
    categories = rng.sample(list(Service), rng.randint(1, 3))
    words = rng.sample(["trauma-informed", "confidential", "walk-in", "24/7", "bilingual",
                        "case-managed", "free", "family"], 3)
    return ServiceIn(
        name=f"Service {i} {' '.join(words)}",
        description=f"{' '.join(words)} {categories[0].value.replace('_', ' ')} for survivors",
        categories=categories,
        languages=rng.sample(LANGUAGES, rng.randint(1, 3)),
        populations=rng.sample(list(Population), rng.randint(1, 3)),
        accepting=rng.choice(list(Accepting)),
        capacity={"available": rng.choice([None, 0, 1, 2, 5]),
                  "unit": rng.choice(list(CapacityUnit))},
    )


async def seed(settings: Settings, n_services: int, per_agency: int = 20) -> tuple[str, bytes]:
    """Agencies and their services; (client id, auth seed) of a caseworker who searches."""
    rng = random.Random(15)
    engine = create_engine(settings)
    base = datetime.now(UTC) - timedelta(days=3)
    try:
        async with sessionmaker(engine)() as db, db.begin():
            searcher = await unsafe_onboard_generated(
                db, SYSTEM, name="bench searcher", kind="ngo", roles=["caseworker"]
            )
            for a in range((n_services + per_agency - 1) // per_agency):
                agency = await unsafe_onboard_generated(
                    db, SYSTEM, name=f"bench agency {a}", kind="shelter", roles=[]
                )
                for i in range(per_agency):
                    body = _service(rng, a * per_agency + i)
                    when = base + timedelta(seconds=rng.randint(0, 3 * 86400))
                    await directory.publish(db, SYSTEM, agency.agency_id, [body], now=when)
        async with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                await conn.execute(text("ANALYZE"))  # as autovacuum would after a bulk load
                await conn.commit()
        client_id, auth = searcher.clients["caseworker"]
        return client_id, auth.seed
    finally:
        await engine.dispose()


async def explain(settings: Settings) -> str:
    """The PostgreSQL plan of the combined query (what the index does)."""
    engine = create_engine(settings)
    try:
        params = {"terms": ["category:shelter", "population:women", "language:es"],
                  "rank": 2, "limit": 51}
        stmt = directory._search_query(3, True, False, False, True)
        sql = stmt.params(**params).compile(
            engine.sync_engine, compile_kwargs={"literal_binds": True}
        )
        async with engine.connect() as conn:
            rows = await conn.execute(text(f"EXPLAIN ANALYZE {sql}"))
            return "\n".join(r[0] for r in rows)
    finally:
        await engine.dispose()


def _loadavg() -> str:
    """The 1-, 5- and 15-minute load averages (the machine is shared: say how busy)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def probe(base_url: str, client_id: str, seed_bytes: bytes, requests: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
        r = await http.post("/oauth/token", data=token_form(
            client_assertion(client_id, seed_bytes, f"{base_url}/oauth/token")))
        r.raise_for_status()
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        first = await http.get("/v1/directory/services", headers=headers)
        cursor = first.json()["next_cursor"]
        queries = {**QUERIES, "second page": {"cursor": cursor}}
        timings: dict[str, list[float]] = {name: [] for name in queries}
        counts: dict[str, int] = {}
        for _ in range(3):  # warm-up
            for params in queries.values():
                await http.get("/v1/directory/services", params=params, headers=headers)
        paths = {name: "/v1/directory/services" for name in queries}
        queries["floor: GET /v1/limits (no database read)"] = {}
        paths["floor: GET /v1/limits (no database read)"] = "/v1/limits"
        timings[list(queries)[-1]] = []
        # Each round sends every query once, in a shuffled order: in a fixed order, the
        # server's periodic work (the audit sequencer polls every 0.2 s) could fall on the
        # same query of each round whenever a round takes about that long.
        rng = random.Random(20)
        order: list[str] = []
        while len(order) < requests:
            order += rng.sample(list(queries), len(queries))
        for name in order[:requests]:
            started = time.perf_counter()
            r = await http.get(paths[name], params=queries[name], headers=headers)
            timings[name].append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"{name}: {r.status_code} {r.text[:200]}")
            counts[name] = len(r.json().get("items", []))
    return {"timings": timings, "counts": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=900)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="refgate-dirprobe-"))
    db_name = "refgate_directory_probe"
    if args.sqlite:
        sa_url = f"sqlite+aiosqlite:///{work / 'data' / 'refgate.db'}"
    else:
        dataset.recreate_database(args.admin_url, db_name)
        sa_url = dataset.database_urls(args.admin_url, db_name)[1]
    settings = Settings(env="test", data_dir=work / "data", database_url=sa_url)
    dataset.migrate(sa_url, work / "data")
    started = time.monotonic()
    client_id, seed_bytes = asyncio.run(seed(settings, args.services))
    print(f"seeded {args.services} services in {time.monotonic() - started:.1f} s")
    if not args.sqlite:
        print(asyncio.run(explain(settings)))
    port = servers.free_port()
    server = servers.start_refgate(sa_url, work / "data", port, 1, work / "server.log",
                                   rate_limit=False)
    try:
        print(f"load average before: {_loadavg()}")
        result = asyncio.run(probe(server.base_url, client_id, seed_bytes, args.requests))
        print(f"load average after: {_loadavg()}")
    finally:
        server.stop()
        if not args.sqlite:
            dataset.drop_database(args.admin_url, db_name)
    everything: list[float] = []
    print("\n| query | items | n | p50 ms | p95 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, values in result["timings"].items():
        if not name.startswith("floor"):
            everything += values
        print(f"| {name} | {result['counts'][name]} | {len(values)} | "
              f"{statistics.median(values):.1f} | {_pct(values, 0.95):.1f} | "
              f"{_pct(values, 0.99):.1f} |")
    p95 = _pct(everything, 0.95)
    print(f"| all directory queries | - | {len(everything)} | "
          f"{statistics.median(everything):.1f} | {p95:.1f} | {_pct(everything, 0.99):.1f} |")
    print(f"\np95 over all queries: {p95:.1f} ms (target <= 20 ms): "
          f"{'pass' if p95 <= 20 else 'short'}")


if __name__ == "__main__":
    main()
