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
  (when the ``webhook_delivery`` table exists), ``refgate_database_up``.

Several workers: each keeps its counters in memory and, at most every
``FLUSH_INTERVAL`` seconds (in a thread), writes a snapshot to
``<data_dir>/metrics/<pid>-<start>.json``. The worker that answers a scrape adds
every snapshot up, so counters cover all workers and stay monotonic when one
dies (its last snapshot stays; snapshots untouched for ``STALE_AFTER`` are
pruned, which Prometheus reads as a counter reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.models.types import UTCDateTime, utcnow
from app.vocab import DeliveryStatus

log = logging.getLogger("refgate.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FLUSH_INTERVAL = 2.0
STALE_AFTER = 3600.0
REQUESTS = "refgate_http_requests_total"
DURATION = "refgate_http_request_duration_seconds"
RATE_LIMITED = "refgate_rate_limited_total"

Labels = tuple[tuple[str, str], ...]
_LATEST_CHECKPOINT = text(
    "SELECT tree_size, created_at FROM audit_checkpoint ORDER BY tree_size DESC LIMIT 1"
).columns(tree_size=BigInteger, created_at=UTCDateTime)
_HELP = {
    REQUESTS: ("counter", "HTTP requests by method, route template and status."),
    DURATION: ("histogram", "HTTP request latency in seconds by method, route template, status."),
    RATE_LIMITED: ("counter", "Requests refused with 429, by limit."),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


class Metrics:
    """One registry per app (``app.state.metrics``); ``observe`` is the middleware hook."""

    def __init__(self, data_dir: Path | None) -> None:
        self.counters: dict[tuple[str, Labels], float] = {}
        self.histograms: dict[Labels, list[Any]] = {}  # labels -> [bucket counts, sum, count]
        self._file: Path | None = None
        self._last_flush = 0.0
        self._flushing = False
        self._timer: asyncio.TimerHandle | None = None
        self._has_webhooks = False
        self._has_witnesses = False
        if data_dir is not None:  # created on the first write, not when the app is built
            self._file = data_dir / "metrics" / f"{os.getpid()}-{time.time_ns()}.json"

    # ------------------------------------------------------------- recording

    def inc(self, name: str, labels: Labels = (), value: float = 1.0) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels: Labels = (("method", method), ("route", route), ("status", str(status)))
        self.inc(REQUESTS, labels)
        hist = self.histograms.get(labels)
        if hist is None:
            hist = self.histograms[labels] = [[0] * (len(BUCKETS) + 1), 0.0, 0]
        index = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
        hist[0][index] += 1
        hist[1] += seconds
        hist[2] += 1
        self._maybe_flush()

    def rate_limited(self, limit: str) -> None:
        self.inc(RATE_LIMITED, (("limit", limit),))

    # ------------------------------------------------------------- snapshots

    def _snapshot(self) -> str:
        return json.dumps(
            {
                "counters": [[n, list(map(list, lb)), v] for (n, lb), v in self.counters.items()],
                "histograms": [
                    [list(map(list, lb)), list(h[0]), h[1], h[2]]
                    for lb, h in self.histograms.items()
                ],
            }
        )

    def _write(self, snapshot: str) -> None:
        if self._file is None:
            return
        tmp = self._file.parent / f".{self._file.stem}-{threading.get_ident()}.tmp"
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(snapshot)
            tmp.replace(self._file)
        except OSError as exc:  # read-only data directory: cover this worker only, say so once
            log.warning(
                "metrics snapshot not written; /metrics covers this worker only",
                extra={"error": repr(exc)},
            )
            self._file = None

    def _maybe_flush(self) -> None:
        """Write a snapshot now if the last is ``FLUSH_INTERVAL`` old, else once that long after it.

        The timer makes the last requests before a quiet spell reach the snapshot too.
        """
        if self._file is None:
            return
        wait = self._last_flush + FLUSH_INTERVAL - time.monotonic()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._flushing or wait > 0:
            if self._timer is None:
                self._timer = loop.call_later(max(wait, 0.1), self._flush_from_timer)
            return
        self._last_flush = time.monotonic()
        self._flushing = True
        try:
            future = loop.run_in_executor(None, self._write, self._snapshot())
        except RuntimeError:  # the executor is shutting down
            self._flushing = False
            return
        future.add_done_callback(lambda _f: setattr(self, "_flushing", False))

    def _flush_from_timer(self) -> None:
        self._timer = None
        self._maybe_flush()

    def _merged(self) -> tuple[dict[tuple[str, Labels], float], dict[Labels, list[Any]]]:
        """Every worker's snapshot added up (this worker's from memory)."""
        counters = dict(self.counters)
        histograms = {lb: [list(h[0]), h[1], h[2]] for lb, h in self.histograms.items()}
        if self._file is None:
            return counters, histograms
        now = time.time()
        paths = self._file.parent.glob("*.json") if self._file.parent.is_dir() else []
        for path in paths:
            if path == self._file:
                continue
            try:
                if now - path.stat().st_mtime > STALE_AFTER:
                    path.unlink(missing_ok=True)
                    continue
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for name, lb, value in data.get("counters", []):
                key = (name, tuple((str(k), str(v)) for k, v in lb))
                counters[key] = counters.get(key, 0.0) + float(value)
            for lb, buckets, total, count in data.get("histograms", []):
                labels = tuple((str(k), str(v)) for k, v in lb)
                mine = histograms.setdefault(labels, [[0] * (len(BUCKETS) + 1), 0.0, 0])
                if len(buckets) == len(mine[0]):
                    mine[0] = [a + int(b) for a, b in zip(mine[0], buckets, strict=True)]
                    mine[1] += float(total)
                    mine[2] += int(count)
        return counters, histograms

    # ------------------------------------------------------------- exposition

    async def _gauges(self, engine: AsyncEngine) -> list[tuple[str, str, Labels, float]]:
        out: list[tuple[str, str, Labels, float]] = []
        try:
            async with engine.connect() as conn:
                pending = (await conn.execute(text("SELECT count(*) FROM audit_pending"))).scalar()
                size = (await conn.execute(text("SELECT size FROM audit_tree_state"))).scalar()
                cp = (await conn.execute(_LATEST_CHECKPOINT)).first()
                out += [
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
                if not self._has_witnesses:
                    self._has_witnesses = await conn.run_sync(
                        lambda sync: inspect(sync).has_table("witness_state")
                    )
                if self._has_witnesses:
                    from app.services.witnesses import gauges as witness_gauges

                    out += await witness_gauges(conn)
                if not self._has_webhooks:
                    self._has_webhooks = await conn.run_sync(
                        lambda sync: inspect(sync).has_table("webhook_delivery")
                    )
                if self._has_webhooks:
                    rows = (
                        await conn.execute(
                            text("SELECT status, count(*) FROM webhook_delivery GROUP BY status")
                        )
                    ).all()
                    by_status = {str(s): float(n) for s, n in rows}
                    out.append(
                        ("refgate_webhook_queue_depth",
                         "Webhook deliveries waiting to be sent (pending).",
                         (), by_status.get(DeliveryStatus.PENDING, 0.0))
                    )
                    out += [
                        ("refgate_webhook_deliveries", "Webhook deliveries by status.",
                         (("status", s),), n)
                        for s, n in sorted(by_status.items())
                    ]
            up = 1.0
        except Exception as exc:  # the scrape must still answer when the database does not
            log.warning(  # the type only: a driver error quotes the statement
                "metrics: database gauges unavailable", extra={"exc_type": type(exc).__name__}
            )
            up = 0.0
        out.append(("refgate_database_up", "1 when the database answered this scrape.", (), up))
        return out

    async def render(self, engine: AsyncEngine) -> str:
        with contextlib.suppress(RuntimeError):
            await asyncio.to_thread(self._write, self._snapshot())
        counters, histograms = await asyncio.to_thread(self._merged)
        lines = [
            "# HELP refgate_build_info The running refgate version.",
            "# TYPE refgate_build_info gauge",
            f'refgate_build_info{{version="{_escape(__version__)}"}} 1',
        ]
        for name in (REQUESTS, RATE_LIMITED):
            kind, help_text = _HELP[name]
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            for (n, lb), value in sorted(counters.items()):
                if n == name:
                    lines.append(f"{name}{_labels(lb)} {_number(value)}")
        kind, help_text = _HELP[DURATION]
        lines += [f"# HELP {DURATION} {help_text}", f"# TYPE {DURATION} {kind}"]
        for lb, (buckets, total, count) in sorted(histograms.items()):
            cumulative = 0
            for bound, n in zip((*BUCKETS, float("inf")), buckets, strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else _number(bound)
                lines.append(f"{DURATION}_bucket{_labels((*lb, ('le', le)))} {cumulative}")
            lines.append(f"{DURATION}_sum{_labels(lb)} {repr(float(total))}")
            lines.append(f"{DURATION}_count{_labels(lb)} {count}")
        seen: set[str] = set()
        for name, help_text, lb, value in await self._gauges(engine):
            if name not in seen:
                seen.add(name)
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines.append(f"{name}{_labels(lb)} {_number(value)}")
        return "\n".join(lines) + "\n"
