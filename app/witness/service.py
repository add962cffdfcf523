"""The witness HTTP service (C2SP ``tlog-witness``) and ``refgate-server witness``.

``POST /add-checkpoint`` answers exactly as the spec says, in its order:

- 400 a malformed body;
- 404 the checkpoint's origin is not a log this witness serves;
- 403 no signature by a key trusted for that origin verifies (others ignored);
- 400 the old size exceeds the checkpoint's size;
- 409 ``text/x.tlog.size`` (the latest cosigned size and a newline) when the
  old size is not the latest cosigned size (0 if none);
- 422 the consistency proof does not verify;
- 409 the same size as the latest cosigned with another root (a fork);
- 200 one ``tlog-cosignature`` v1 line, after the new state is persisted
  (``store.advance``: check and persist are one atomic step).

Other refusals are problem+json. Every refusal is logged (origin, sizes,
reason); a validly signed checkpoint that is inconsistent with what was
cosigned (422, or 409 for another root) is logged as an error and kept whole
in the witness database (``witness_refusal``): it is evidence of a log
showing two views.

A log is trusted with ``--log VKEY`` (its Ed25519 signed-note verifier key,
``<name>+<hex>+<base64 of 0x01 || key>``); the key's name is the origin its
checkpoints carry. Several keys may share an origin (a key rotation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from app import errors
from app.crypto import keys
from app.crypto.checkpoint import VerifierKey, parse_verifier_key
from app.crypto.cosignature import cosign, witness_vkey
from app.crypto.note import verified_by
from app.witness import store
from app.witness.protocol import (
    MAX_BODY_BYTES,
    SIZE_CONTENT_TYPE,
    ProtocolError,
    Submission,
    Verdict,
    judge,
    parse_add_checkpoint,
    size_body,
)

log = logging.getLogger("refgate.witness")
PROBLEM = errors.PROBLEM_BASE + "witness/"


@dataclass(frozen=True)
class WitnessConfig:
    name: str
    seed: bytes
    database_url: str
    logs: dict[str, list[VerifierKey]] = field(default_factory=dict)

    @property
    def vkey(self) -> str:
        return witness_vkey(self.name, keys.sig_public_from_seed(self.seed))


def trusted_logs(vkeys: Sequence[str]) -> dict[str, list[VerifierKey]]:
    """Origin -> the log keys trusted for it, from ``--log`` verifier keys."""
    logs: dict[str, list[VerifierKey]] = {}
    for vkey in vkeys:
        key = parse_verifier_key(vkey.strip())
        logs.setdefault(key.name, []).append(key)
    return logs


def _problem(status: int, slug: str, detail: str) -> JSONResponse:
    return JSONResponse(
        errors.problem(status, detail, PROBLEM + slug),
        status_code=status,
        media_type=errors.PROBLEM_JSON,
    )


async def _read_body(request: Request) -> bytes | None:
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Witness:
    """Judges submissions and cosigns; shared by the HTTP route and the tests."""

    def __init__(self, config: WitnessConfig, engine: AsyncEngine) -> None:
        self.config = config
        self.engine = engine

    def _refused(self, status: int, slug: str, detail: str, **context: Any) -> JSONResponse:
        log.warning("refused checkpoint", extra={"status": status, "reason": slug, **context})
        return _problem(status, slug, detail)

    async def add_checkpoint(self, body: bytes) -> Response:
        try:
            sub = parse_add_checkpoint(body)
        except ProtocolError as exc:
            return self._refused(400, "malformed", str(exc))
        origin = sub.checkpoint.origin
        trusted = self.config.logs.get(origin)
        if not trusted:
            return self._refused(
                404, "unknown-log", "this witness does not serve a log with that origin",
                origin=origin[:200],
            )
        if not verified_by(sub.note, trusted):
            return self._refused(
                403, "not-signed", "no signature by a key trusted for this log verifies",
                origin=origin,
            )
        return await self._check_and_cosign(sub, body)

    async def _check_and_cosign(self, sub: Submission, body: bytes) -> Response:
        origin, size = sub.checkpoint.origin, sub.checkpoint.size
        for _ in range(2):  # a lost race is re-judged once against the winner's state
            latest = await store.latest(self.engine, origin)
            verdict, reason = judge(sub, latest.size, latest.root)
            if verdict is not Verdict.COSIGN:
                return await self._refuse(sub, body, verdict, reason, latest.size)
            if await store.advance(
                self.engine, origin, latest, size, sub.checkpoint.root, sub.note.text
            ):
                timestamp = int(time.time())
                line = cosign(sub.note.text, self.config.seed, self.config.name, timestamp)
                log.info("cosigned", extra={"origin": origin, "size": size, "old": sub.old_size})
                return PlainTextResponse(line)
        latest = await store.latest(self.engine, origin)
        return await self._refuse(
            sub, body, Verdict.STALE_OLD_SIZE, "another submission moved the log", latest.size
        )

    async def _refuse(
        self, sub: Submission, body: bytes, verdict: Verdict, reason: str, latest_size: int
    ) -> Response:
        origin, size = sub.checkpoint.origin, sub.checkpoint.size
        context = {"origin": origin, "old": sub.old_size, "size": size, "latest": latest_size}
        evidence = verdict in (Verdict.BAD_PROOF, Verdict.ROOT_MISMATCH)
        log.log(
            logging.ERROR if evidence else logging.INFO,
            f"refused checkpoint: {reason}",
            extra={"reason": str(verdict), **context},
        )
        if evidence:  # a signed checkpoint inconsistent with one we cosigned: keep it whole
            try:
                await store.record_refusal(
                    self.engine, origin=origin, status=verdict.status, reason=str(verdict),
                    old_size=sub.old_size, size=size, latest_size=latest_size,
                    submission=body.decode("utf-8"),
                )
            except Exception as exc:  # keeping evidence must not turn a refusal into a 500
                log.error("refusal not recorded", extra={"error": type(exc).__name__})
        if verdict is Verdict.STALE_OLD_SIZE:
            # exactly this type: Starlette would add "; charset=utf-8" to a media_type
            return Response(
                size_body(latest_size), status_code=409,
                headers={"content-type": SIZE_CONTENT_TYPE},
            )
        return _problem(verdict.status, str(verdict), reason)


def create_witness_app(config: WitnessConfig) -> FastAPI:
    """The witness as an ASGI app: ``POST /add-checkpoint`` and ``GET /`` (its key)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await store.open_store(config.database_url)
        app.state.witness = Witness(config, engine)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(title="refgate witness", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        body = await _read_body(request)
        if body is None:
            return _problem(413, "too-large", f"a submission is at most {MAX_BODY_BYTES} bytes")
        witness: Witness = request.app.state.witness
        return await witness.add_checkpoint(body)

    @app.get("/")
    async def info() -> PlainTextResponse:
        return PlainTextResponse(config.vkey + "\n")

    return app
