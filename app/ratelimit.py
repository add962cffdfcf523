"""Rate limits: fixed-window counters, shared by every worker through the database.

What is counted (defaults from ``RateLimitSettings``, ``REFGATE_RATELIMIT__*``):

=============  ==============  ======================  ==========================================
where          per             default                 what counts
=============  ==============  ======================  ==========================================
/oauth/token   source address  120 / minute            every request, before the body is read
/oauth/token   client          30 / minute             tokens issued: only an assertion that
                                                       verified counts, so a stranger cannot
                                                       spend a client's quota
/v1/*          client          600 / minute and        requests with a valid access token
                               100 / 10 s (burst)      (keyed on the token's ``sub``)
/v1/*          source address  120 / minute            requests without a valid token (each
                                                       one writes a denial event)
=============  ==============  ======================  ==========================================

Why these numbers: access tokens live 10 minutes and a machine client fetches
one every few minutes, so 30 a minute covers a restart storm of many worker
processes sharing one client; a burst of hundreds is a bug or an attack. 120
per address leaves room for several clients behind one NAT. 600 API requests a
minute sustains 10/s per client (an inbox sync), and the 10-second window caps
a burst at 100 (up to 200 across a window edge: fixed windows trade that slack
for one counter row per window).

Over a limit: 429 problem+json with ``Retry-After`` (seconds to the end of the
window). A refused token is also an audit event (a refused log-on); API 429s
are not, or a flood would write the audit log on the attacker's behalf.

Storage, ``backend = "database"``: table ``rate_limit(key, window_start,
count)``, shared by every worker. Each worker counts in memory and, every
``share_every`` seconds (0.5 by default) while it has traffic, adds what it
counted to the table in one statement and reads back the totals::

    INSERT INTO rate_limit (key, window_start, count) VALUES (:k1, :w1, :n1), …
    ON CONFLICT (key, window_start) DO UPDATE SET count = rate_limit.count + excluded.count
    RETURNING key, window_start, count

A request is judged on the last totals plus what this worker counted since, so
no request waits for a statement. The price: a worker sees the others' requests
up to ``share_every`` seconds late, so N workers can let through at most
N × (rate × ``share_every``) more than a limit before all of them refuse. With
the defaults and 2 to 4 workers that is a few requests per window; a flood is
stopped within a second. (The first version ran that upsert in a transaction of
its own before every request: a third of a read request's CPU, measured in
``bench/``.) ``share_every = 0`` restores one upsert per request, exact.

The per-client token count runs in the token request's transaction instead, so
it counts tokens actually issued, exactly (tokens are rare). PostgreSQL
serializes the upserts of one key on that row's lock. Once a minute a worker
deletes windows that have ended. Redis was not chosen: PostgreSQL is already
the one shared dependency. ``backend = "memory"`` keeps the counters in the
process (limits per worker); ``auto`` (the default) uses the database on
PostgreSQL and memory on SQLite, where a laptop runs one process and a second
writer would only contend for SQLite's single write lock.

Source addresses are ``scope["client"]``: behind a reverse proxy uvicorn's
``--proxy-headers`` (on in ``refgate-server serve``) takes them from
``X-Forwarded-For`` when the proxy is trusted (``--forwarded-allow-ips``).

Failure: when sharing fails (database unreachable), the worker keeps counting
in memory, logs a warning and retries at the next interval; with
``share_every = 0`` the request passes with a warning. It meets the same
database next and fails or succeeds on its own; a limiter must not turn a
database blip into a refusal of everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError
from sqlalchemy import BigInteger, Column, Integer, String, Table, delete
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlmodel import SQLModel
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app import dialect, errors
from app.config import RateLimitSettings, Settings
from app.context import request_id_var
from app.dialect import url_is_postgres
from app.identity import Actor
from app.middleware import send_problem
from app.services.audit import Action, Outcome, PendingEvent
from app.tokens import bearer_token, verified_tokens

log = logging.getLogger("refgate.ratelimit")

rate_limit_table = Table(
    "rate_limit",
    SQLModel.metadata,
    Column("key", String(160), primary_key=True),
    Column("window_start", BigInteger, primary_key=True, autoincrement=False),
    Column("count", Integer, nullable=False),
    extend_existing=True,
)

SWEEP_EVERY = 60.0


@dataclass(frozen=True)
class Limit:
    name: str
    limit: int
    window: int  # seconds


@dataclass(frozen=True)
class Exceeded:
    limit: Limit
    retry_after: int


def _drop_ended(counters: dict[tuple[str, int], int], now: float) -> None:
    """Forget the counts of windows that started more than two sweeps ago."""
    horizon = now - 2 * SWEEP_EVERY
    for slot in [slot for slot in counters if slot[1] < horizon]:
        del counters[slot]


def _key(limit: Limit, subject: str) -> str:
    if len(subject) > 100:  # keys stay bounded whatever a proxy reports
        subject = hashlib.sha256(subject.encode()).hexdigest()
    return f"{limit.name}:{subject}"


class RateLimiter:
    """Counts hits against fixed windows; one instance per app (``app.state.rate_limiter``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        cfg: RateLimitSettings = settings.ratelimit
        self.enabled = cfg.enabled
        backend = cfg.backend
        if backend == "auto":
            url = settings.resolved_database_url
            backend = "database" if url_is_postgres(url) else "memory"
        self.backend = backend
        self.token_address = Limit("token-address", cfg.token_per_address, 60)
        self.token_client = Limit("token-client", cfg.token_per_client, 60)
        self.api_client = Limit("api-client", cfg.api_per_client, 60)
        self.api_burst = Limit("api-burst", cfg.api_burst, 10)
        self.anonymous = Limit("api-anonymous", cfg.anonymous_per_address, 60)
        self.share_every = cfg.share_every
        self._memory: dict[tuple[str, int], int] = {}
        self._next_sweep = 0.0
        self._on_refused = on_refused
        # database backend with sharing: totals last read back, and counts not yet shared
        self._shared: dict[tuple[str, int], int] = {}
        self._unshared: dict[tuple[str, int], int] = {}
        self._next_share = 0.0
        self._sharing: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- counting

    async def hit(
        self,
        hits: Sequence[tuple[Limit, str]],
        *,
        engine: AsyncEngine | None = None,
        session: AsyncSession | None = None,
    ) -> Exceeded | None:
        """Count one request against each (limit, subject); the tightest refusal, if any.

        With the database backend the count runs on ``session`` (inside the
        caller's transaction) when given, else in a transaction of its own on
        ``engine``.
        """
        if not self.enabled or not hits:
            return None
        now = time.time()
        windows = {
            _key(limit, subject): int(now // limit.window) * limit.window for limit, subject in hits
        }
        if self.backend == "memory":
            counts = self._count_memory(windows, now)
        elif session is not None:
            # inside the caller's transaction: a failure there fails the request anyway
            counts = await self._count_exact(await session.connection(), windows, now)
        elif engine is not None and self.share_every > 0:
            counts = self._count_shared(windows, now, engine)
        elif engine is not None:
            try:
                async with engine.begin() as conn:
                    counts = await self._count_exact(conn, windows, now)
            except Exception as exc:  # fail open: see the module docstring
                log.warning(  # the type only: a driver error quotes the statement and its keys
                    "rate limiter unavailable, request allowed",
                    extra={"exc_type": type(exc).__name__},
                )
                return None
        else:
            return None
        worst: Exceeded | None = None
        for limit, subject in hits:
            key = _key(limit, subject)
            if counts.get(key, 0) > limit.limit:
                retry = max(1, math.ceil(windows[key] + limit.window - now))
                if worst is None or retry > worst.retry_after:
                    worst = Exceeded(limit, retry)
        if worst is not None and self._on_refused is not None:
            self._on_refused(worst.limit.name)
        return worst

    def _count_memory(self, windows: dict[str, int], now: float) -> dict[str, int]:
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            _drop_ended(self._memory, now)
        counts = {}
        for key, start in windows.items():
            counts[key] = self._memory[(key, start)] = self._memory.get((key, start), 0) + 1
        return counts

    def _count_shared(
        self, windows: dict[str, int], now: float, engine: AsyncEngine
    ) -> dict[str, int]:
        """The last shared totals plus this worker's unshared hits; shares when due."""
        counts = {}
        for key, start in windows.items():
            slot = (key, start)
            self._unshared[slot] = unshared = self._unshared.get(slot, 0) + 1
            counts[key] = self._shared.get(slot, 0) + unshared
        if now >= self._next_share and (self._sharing is None or self._sharing.done()):
            self._next_share = now + self.share_every
            self._sharing = asyncio.create_task(self.share(engine))
        return counts

    async def close(self) -> None:
        """Wait for a share in flight (before the engine is disposed)."""
        if self._sharing is not None:
            await asyncio.gather(self._sharing, return_exceptions=True)

    async def share(self, engine: AsyncEngine) -> None:
        """Add this worker's unshared counts to the table and read back the totals."""
        now = time.time()
        # windows that ended long ago are not worth sharing (and, while the database
        # is unreachable, must not pile up)
        _drop_ended(self._unshared, now)
        batch = dict(self._unshared)
        if not batch:
            return
        try:
            async with engine.begin() as conn:
                totals = await self._add_sql(conn, batch, now)
        except Exception as exc:  # keep counting locally; retried at the next interval
            log.warning(  # the type only: a driver error quotes the statement and its keys
                "rate limiter could not share its counts", extra={"exc_type": type(exc).__name__}
            )
            return
        for slot, n in batch.items():
            left = self._unshared.get(slot, 0) - n
            if left > 0:
                self._unshared[slot] = left
            else:
                self._unshared.pop(slot, None)
        _drop_ended(self._shared, now)
        self._shared.update(totals)

    async def _count_exact(
        self, conn: AsyncConnection, windows: dict[str, int], now: float
    ) -> dict[str, int]:
        totals = await self._add_sql(conn, {(k, w): 1 for k, w in windows.items()}, now)
        return {k: totals.get((k, w), 0) for k, w in windows.items()}

    async def _add_sql(
        self, conn: AsyncConnection, adds: dict[tuple[str, int], int], now: float
    ) -> dict[tuple[str, int], int]:
        """Add ``adds`` to the stored counters; the totals by (key, window start)."""
        rows = [{"key": k, "window_start": w, "count": n} for (k, w), n in sorted(adds.items())]
        t = rate_limit_table
        insert = dialect.insert(conn, t).values(rows)
        stmt = insert.on_conflict_do_update(
            index_elements=["key", "window_start"],
            set_={"count": t.c.count + insert.excluded.count},
        ).returning(t.c.key, t.c.window_start, t.c.count)
        result = await conn.execute(stmt)
        totals = {(key, int(start)): int(count) for key, start, count in result}
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            await conn.execute(
                delete(rate_limit_table).where(
                    rate_limit_table.c.window_start < int(now - 2 * SWEEP_EVERY)
                )
            )
        return totals

    # ------------------------------------------------------------- request keys

    def api_hits(self, client_id: str) -> list[tuple[Limit, str]]:
        return [(self.api_client, client_id), (self.api_burst, client_id)]


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _subject(token: str, state: Any) -> str | None:
    """The client id of a valid, unexpired access token of this server, else None.

    Uses the process's one cache of verified tokens (``app.tokens``): a client
    reuses one token for minutes, so most requests skip the signature check
    (``app.auth.require`` validates every request independently).
    """
    server_keys = getattr(state, "server_keys", None)
    key_set = getattr(state, "token_verify_key", None)
    if server_keys is None or key_set is None:
        return None
    try:
        claims = verified_tokens.claims(token, server_keys.token_verify_keys, key_set)
    except (JoseError, ValueError):
        return None
    exp, sub = claims.get("exp"), claims.get("sub")
    if not isinstance(exp, int | float) or exp <= time.time() or not isinstance(sub, str):
        return None
    if claims.get("iss") != getattr(state, "issuer", None):
        return None
    return sub


async def send_too_many(send: Send, path: str, exceeded: Exceeded) -> None:
    body = errors.problem_bytes(
        429,
        f"rate limit {exceeded.limit.name} ({exceeded.limit.limit} per "
        f"{exceeded.limit.window} s) exceeded; retry after {exceeded.retry_after} s",
        errors.PROBLEM_BASE + "rate-limited",
        request_id=request_id_var.get(),
        instance=path,
    )
    retry = [(b"retry-after", str(exceeded.retry_after).encode())]
    await send_problem(send, 429, body, headers=retry)


class RateLimitMiddleware:
    """Pure ASGI: per-address limit on ``/oauth/token``, per-client limits on ``/v1``."""

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limiter.enabled:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limiter = self.limiter
        if path == "/oauth/token":
            hits = [(limiter.token_address, client_address(scope))]
        elif path.startswith("/v1/") or path == "/v1":
            state = scope["app"].state
            token = bearer_token(Headers(scope=scope).get("authorization"))
            subject = _subject(token, state) if token else None
            if subject is not None:
                hits = limiter.api_hits(subject)
            else:
                hits = [(limiter.anonymous, client_address(scope))]
        else:
            await self.app(scope, receive, send)
            return
        engine = getattr(scope["app"].state, "engine", None)
        exceeded = await limiter.hit(hits, engine=engine)
        if exceeded is not None:
            await send_too_many(send, path, exceeded)
            return
        await self.app(scope, receive, send)


async def limit_token_issue(request: Request, db: AsyncSession, issued_to: Actor) -> None:
    """Count a token about to be issued against its client's limit; 429 if over.

    Runs in the token request's transaction: a refusal rolls the issue back (the
    assertion's ``jti`` stays unused) and leaves a ``token:issue`` denied event.
    """
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None or not limiter.enabled:
        return
    client_id = issued_to.client_id or ""
    exceeded = await limiter.hit([(limiter.token_client, client_id)], session=db)
    if exceeded is None:
        return
    raise errors.TooManyRequests(
        f"this client may obtain {exceeded.limit.limit} tokens per minute; reuse the token "
        f"until it expires; retry after {exceeded.retry_after} s",
        headers={"Retry-After": str(exceeded.retry_after)},
        audit=PendingEvent(
            actor=issued_to,
            action=Action.TOKEN_ISSUE,
            resource_type="client",
            resource_id=client_id,
            outcome=Outcome.DENIED,
            detail={"reason": "rate_limited", "limit": exceeded.limit.name},
        ),
    )
