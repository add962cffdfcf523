"""Background work that exactly one worker of a deployment does.

``LeaderRunner`` runs ``step()`` in a loop in the one process that holds a
PostgreSQL advisory lock (on SQLite, an embedded single-node database, the
process simply runs it). The lock lives on a dedicated connection; the loop
pings that connection, so a leader whose connection died (and whose lock was
therefore released) stops and competes again instead of running beside the
new leader. Workers that do not hold the lock retry every few seconds, so
another takes over when the leader dies.

Subclasses: the audit sequencer and the webhook dispatcher. Their work is safe
even if two leaders overlapped for a moment (row locks, SKIP LOCKED); the lock
keeps the work in one place, it is not what makes it correct.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from typing import ClassVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.dialect import is_postgres

log = logging.getLogger("refgate.leader")
HEARTBEAT_SECONDS = 5.0


class LeaderRunner(abc.ABC):
    name: ClassVar[str]
    lock_key: ClassVar[int]

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.is_leader = False

    @abc.abstractmethod
    async def step(self) -> bool:
        """Do one unit of work; True when more is waiting (loop again at once)."""

    @abc.abstractmethod
    def idle_seconds(self) -> float:
        """How long to wait after a step that found nothing more to do."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if is_postgres(self.engine):
                    await self._lead_postgres()
                else:
                    self.is_leader = True
                    await self._work(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost connection or a failed step: retry
                log.warning(f"{self.name} error, retrying", extra={"error": type(exc).__name__})
            self.is_leader = False
            await self.sleep(1.0)

    async def _lead_postgres(self) -> None:
        async with self.engine.connect() as conn:
            lock = {"k": self.lock_key}
            got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), lock)).scalar_one()
            await conn.commit()
            if not got:
                await self.sleep(2.0)
                return
            self.is_leader = True
            log.info(f"{self.name} leadership acquired")
            try:
                await self._work(conn)
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), lock)
                    await conn.commit()

    async def _work(self, lock_conn: AsyncConnection | None) -> None:
        last_beat = time.monotonic()
        while not self._stopping.is_set():
            if lock_conn is not None and time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                await lock_conn.execute(text("SELECT 1"))  # raises if the lock is gone
                await lock_conn.commit()
                last_beat = time.monotonic()
            if not await self.step():
                await self.sleep(self.idle_seconds())
