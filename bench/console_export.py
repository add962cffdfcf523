"""Measure the console's audit export of N events (default 100,000) in headless Chromium.

Starts ``refgate-server serve --demo`` on a fresh SQLite database, appends N
audit events with ``app.services.audit.record_pending`` (as the gateway writes
them), then runs ``console/e2e/export_bench.mjs``: the demo auditor exports
everything as NDJSON from the console while the page's JS heap and progress text
are sampled. Prints the measurement as JSON. Usage:

    .venv/bin/python -m bench.console_export [N]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.services.audit import Action, Actor, PendingEvent, record_pending
from tests.client.test_cli import free_port
from tests.console import node

BIN = Path(sys.executable).parent


async def seed(url: str, n: int) -> None:
    engine = create_async_engine(url)
    maker = async_sessionmaker(engine)
    actor = Actor(client_id=str(uuid.uuid4()), agency_id=str(uuid.uuid4()), role="caseworker")
    try:
        for start in range(0, n, 2000):
            async with maker() as db, db.begin():
                await record_pending(db, *[
                    PendingEvent(actor, Action.REFERRAL_READ, "referral", str(uuid.uuid4()),
                                 purpose="investigation", detail={"fids": ["f" * 22], "i": i})
                    for i in range(start, min(n, start + 2000))])
    finally:
        await engine.dispose()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db_url = f"sqlite+aiosqlite:///{root / 'bench.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REFGATE_")}
        env |= {"REFGATE_DATA_DIR": str(root / "data"), "REFGATE_DATABASE_URL": db_url}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with (root / "server.log").open("w") as log:
            server = subprocess.Popen([str(BIN / "refgate-server"), "serve", "--demo", "--port",
                                       str(port)], env=env, cwd=root, stdout=log,
                                      stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while not (root / "data" / "demo" / "task-force.json").exists():
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit((root / "server.log").read_text())
                    time.sleep(0.2)
                while True:
                    try:
                        if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2)
                t0 = time.monotonic()
                asyncio.run(seed(db_url, n))
                print(f"seeded {n} events in {time.monotonic() - t0:.1f}s", file=sys.stderr)
                config = {"url": url, "chromium": node.chromium(),
                          "key": str(root / "data" / "demo" / "auditor.key.json"),
                          "out": str(root / "export.ndjson")}
                (root / "config.json").write_text(json.dumps(config))
                done = node.run([node.node(), "e2e/export_bench.mjs", str(root / "config.json")],
                                timeout=900)
                print(done.stdout.strip())
            finally:
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
