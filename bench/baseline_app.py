"""The raw baseline: the least a FastAPI + asyncpg service can do with the same bodies.

``POST /items`` parses the JSON body (any real endpoint does) and stores it as
one row with one INSERT (its own implicit transaction, so one commit as in
refgate); ``GET /items/{id}`` reads that row by primary key and returns the
stored body. No auth, no validation, no audit: every refgate scenario is
reported as a ratio to these two.

Run by ``bench/run.py`` as ``uvicorn bench.baseline_app:app --workers 2`` with
``BENCH_BASELINE_DSN`` (a plain ``postgresql://`` URL) in the environment; the
table ``baseline_item`` is created by the harness.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, HTTPException, Request, Response

POOL_SIZE = int(os.environ.get("BENCH_BASELINE_POOL", "10"))
TABLE_SQL = "CREATE TABLE baseline_item (id varchar(36) PRIMARY KEY, body text NOT NULL)"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(
        os.environ["BENCH_BASELINE_DSN"], min_size=2, max_size=POOL_SIZE
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/items", status_code=201)
async def create_item(request: Request) -> dict[str, str]:
    raw = await request.body()
    try:
        json.loads(raw)
    except ValueError:
        raise HTTPException(400, "the body is not JSON") from None
    item_id = str(uuid.uuid4())
    await request.app.state.pool.execute(
        "INSERT INTO baseline_item (id, body) VALUES ($1, $2)", item_id, raw.decode("utf-8")
    )
    return {"id": item_id}


@app.get("/items/{item_id}")
async def read_item(item_id: str, request: Request) -> Response:
    body = await request.app.state.pool.fetchval(
        "SELECT body FROM baseline_item WHERE id = $1", item_id
    )
    if body is None:
        raise HTTPException(404, "no such item")
    return Response(body, media_type="application/json")
