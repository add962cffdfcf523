"""The rate limiter's counters: fixed windows, counted in memory and shared by every
worker through the ``rate_limit`` table (the package docstring says how and why)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Integer, String, Table, delete
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlmodel import SQLModel

from app import dialect
from app.config import RateLimitSettings, Settings
from app.dialect import url_is_postgres

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
