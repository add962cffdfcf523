"""The leader runner of the dispatcher, which also runs the periodic retention purge."""

from __future__ import annotations

import logging
import time

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.services import retention
from app.services.leader import LeaderRunner
from app.services.webhooks.dispatcher import dispatch_once, http_client

log = logging.getLogger("refgate.webhooks")
ADVISORY_LOCK_KEY = 0x7265_6667_7768_6B  # "refgwhk", distinct from the sequencer's


class WebhookRunner(LeaderRunner):
    """Delivers webhooks and runs the periodic retention purge, in the one leader worker.

    Retention rides on this runner because it too must run in exactly one worker of
    the deployment: each ``step`` dispatches, then calls ``purge_if_due``."""

    name = "webhook-dispatcher"
    lock_key = ADVISORY_LOCK_KEY

    def __init__(
        self,
        engine: AsyncEngine,
        maker: async_sessionmaker[AsyncSession],
        settings: Settings,
    ) -> None:
        super().__init__(engine)
        self.maker = maker
        self.settings = settings
        self.http = http_client(settings.webhooks)
        # The first purge waits one interval: a restart loop must not purge in a loop.
        self.next_purge_at = time.monotonic() + settings.retention.interval

    async def stop(self) -> None:
        await super().stop()
        await self.http.aclose()

    def idle_seconds(self) -> float:
        return self.settings.webhooks.poll_interval

    async def step(self) -> bool:
        """One round: deliver what is due, then the retention purge if its time has come.

        True when the batch was full (more may be due: no idle wait)."""
        report = await dispatch_once(self.maker, self.settings, self.http)
        await self.purge_if_due()
        return report.claimed == self.settings.webhooks.batch_size

    async def purge_if_due(self) -> None:
        """The periodic retention purge (``app.services.retention``), once per
        ``retention.interval``; a failure is logged and the purge retries at the next
        interval, and never stops deliveries."""
        if time.monotonic() < self.next_purge_at:
            return
        self.next_purge_at = time.monotonic() + self.settings.retention.interval
        try:
            done = await retention.run(self.engine, self.settings)
            if done.referrals or done.expired_grant_keys:
                log.info("retention purge", extra=done.as_dict())
        except Exception as exc:  # the purge retries at the next interval
            log.warning("retention purge failed", extra={"error": type(exc).__name__})
