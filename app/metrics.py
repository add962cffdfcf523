"""Prometheus metrics: requests and latency per route template, audit and webhook gauges.

``GET /metrics`` (``app/routers/metrics.py``) answers in the Prometheus text
format (0.0.4), and only to ``Authorization: Bearer <REFGATE_METRICS__TOKEN>``;
with no token configured the route is 404. A bearer secret was chosen over a
separate port: uvicorn's workers share one listening socket, and a second
listener per worker would need a process manager of its own. Configure the
scraper with ``authorization: {credentials_file: …}``.

Series:

- ``refgate_http_requests_total{method,route,status}`` (counter) and
  ``refgate_http_request_duration_seconds{method,route,status}`` (histogram).
  ``route`` is the route template (``/v1/referrals/{referral_id}``) or
  ``unmatched`` (unknown paths, and 413/429 answered before routing), so labels
  stay bounded and never carry an id, a client or a query string.
- ``refgate_rate_limited_total{limit}`` (counter).
- Read from the database at scrape time, so the same on every worker:
  ``refgate_audit_pending_events`` (sequencer lag: committed events not yet in
  the Merkle tree), ``refgate_audit_tree_size``,
  ``refgate_audit_checkpoint_tree_size``, ``refgate_audit_checkpoint_age_seconds``,
  ``refgate_webhook_queue_depth`` and ``refgate_webhook_deliveries{status}``
  (when the ``webhook_delivery`` table exists), ``refgate_database_up``,
  and ``refgate_build_info{version}``.

Counters and the histogram are ``prometheus_client``'s. One process (the default,
and the tests): each app keeps its own registry in memory. Several workers:
``refgate-server serve --workers N`` points ``PROMETHEUS_MULTIPROC_DIR`` at
``<data_dir>/prometheus`` (emptied at start) before the workers start, so each
worker's values live in files there (``prometheus_client``'s multiprocess mode)
and the worker that answers a scrape adds every worker's up, a dead worker's
included: counters stay monotonic across a worker restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import BigInteger, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import __version__
from app.models.types import UTCDateTime, utcnow
from app.vocab import DeliveryStatus

log = logging.getLogger("refgate.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LABELS = ("method", "route", "status")

_LATEST_CHECKPOINT = text(
    "SELECT tree_size, created_at FROM audit_checkpoint ORDER BY tree_size DESC LIMIT 1"
).columns(tree_size=BigInteger, created_at=UTCDateTime)

Gauge = tuple[str, str, tuple[tuple[str, str], ...], float]

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, when this process runs in it."""
    return os.environ.get(MULTIPROC_ENV) or None


async def _audit_gauges(conn: AsyncConnection) -> list[Gauge]:
    """Sequencer lag, tree size and the latest checkpoint's size and age."""
    pending = (await conn.execute(text("SELECT count(*) FROM audit_pending"))).scalar()
    size = (await conn.execute(text("SELECT size FROM audit_tree_state"))).scalar()
    cp = (await conn.execute(_LATEST_CHECKPOINT)).first()
    out: list[Gauge] = [
        ("refgate_audit_pending_events",
         "Committed audit events not yet sequenced into the log (sequencer lag).",
         (), float(pending or 0)),
        ("refgate_audit_tree_size", "Events in the Merkle log.", (), float(size or 0)),
    ]
    if cp is not None:
        age = (utcnow() - cp[1]).total_seconds()
        out += [
            ("refgate_audit_checkpoint_tree_size",
             "Tree size of the latest signed checkpoint.", (), float(cp[0])),
            ("refgate_audit_checkpoint_age_seconds",
             "Seconds since the latest checkpoint was signed.", (), max(age, 0.0)),
        ]
    return out


class _Gauges(Collector):
    """The gauges read from the database for one scrape."""

    def __init__(self, gauges: Iterable[Gauge]) -> None:
        self.gauges = list(gauges)

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for name, help_text, labels, value in self.gauges:
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(
                    name, help_text, labels=[k for k, _ in labels]
                )
            family.add_metric([v for _, v in labels], value)
        return list(families.values())


class Metrics:
    """One per app (``app.state.metrics``); ``observe`` is the middleware hook."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "refgate_http_requests",
            "HTTP requests by method, route template and status.",
            LABELS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "refgate_http_request_duration_seconds",
            "HTTP request latency in seconds by method, route template, status.",
            LABELS,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.limited = Counter(
            "refgate_rate_limited",
            "Requests refused with 429, by limit.",
            ("limit",),
            registry=self.registry,
        )
        self._has_webhooks = False
        self._has_witnesses = False
        # the two children of each (method, route, status): ``labels()`` checks the
        # values and takes a lock on every call; the children never change (nothing
        # removes a series), and the labels are bounded (route templates, statuses)
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    # ------------------------------------------------------------- recording

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = self._children.setdefault(
                key, (self.requests.labels(*labels), self.duration.labels(*labels))
            )
        children[0].inc()
        children[1].observe(seconds)

    def rate_limited(self, limit: str) -> None:
        self.limited.labels(limit).inc()

    # ------------------------------------------------------------- exposition

    async def _gauges(self, engine: AsyncEngine) -> list[Gauge]:
        out: list[Gauge] = [
            ("refgate_build_info", "The running refgate version.",
             (("version", __version__),), 1.0),
        ]
        try:
            async with engine.connect() as conn:
                out += await _audit_gauges(conn)
                out += await self._witness_gauges(conn)
                out += await self._webhook_gauges(conn)
            up = 1.0
        except Exception as exc:  # the scrape must still answer when the database does not
            log.warning(  # the type only: a driver error quotes the statement
                "metrics: database gauges unavailable", extra={"exc_type": type(exc).__name__}
            )
            up = 0.0
        out.append(("refgate_database_up", "1 when the database answered this scrape.", (), up))
        return out

    async def _witness_gauges(self, conn: AsyncConnection) -> list[Gauge]:
        """The witnesses' gauges, once the ``witness_state`` table exists."""
        if not self._has_witnesses:
            self._has_witnesses = await conn.run_sync(
                lambda sync: inspect(sync).has_table("witness_state")
            )
        if not self._has_witnesses:
            return []
        from app.services.witnesses import gauges as witness_gauges

        return await witness_gauges(conn)

    async def _webhook_gauges(self, conn: AsyncConnection) -> list[Gauge]:
        """Queue depth and deliveries by status, once the ``webhook_delivery`` table exists."""
        if not self._has_webhooks:
            self._has_webhooks = await conn.run_sync(
                lambda sync: inspect(sync).has_table("webhook_delivery")
            )
        if not self._has_webhooks:
            return []
        rows = (
            await conn.execute(
                text("SELECT status, count(*) FROM webhook_delivery GROUP BY status")
            )
        ).all()
        by_status = {str(s): float(n) for s, n in rows}
        return [
            ("refgate_webhook_queue_depth",
             "Webhook deliveries waiting to be sent (pending).",
             (), by_status.get(DeliveryStatus.PENDING, 0.0)),
            *[
                ("refgate_webhook_deliveries", "Webhook deliveries by status.",
                 (("status", s),), n)
                for s, n in sorted(by_status.items())
            ],
        ]

    def _counters(self) -> CollectorRegistry:
        """This process's registry, or in multiprocess mode every worker's files added up."""
        directory = multiprocess_dir()
        if directory is None:
            return self.registry
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        return merged

    async def render(self, engine: AsyncEngine) -> str:
        gauges = CollectorRegistry()
        gauges.register(_Gauges(await self._gauges(engine)))
        counters = await asyncio.to_thread(lambda: generate_latest(self._counters()))
        return (counters + generate_latest(gauges)).decode()
