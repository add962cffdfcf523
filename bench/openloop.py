"""Constant-rate (open-loop) load driver: requests on a fixed schedule.

    python -m bench.openloop URL FILE --rate R --duration S [--connections C] [--once]

wrk 4 (the Debian package) is closed-loop: each connection sends its next
request when the previous answer arrives, so a slow server slows the client
down and the latencies of the requests it never sent are never counted
(coordinated omission). This driver is open-loop, like wrk2: request ``i`` is
due at ``start + i / R`` whatever the server does, and its latency is taken
from that *intended* send time to the last byte of the answer, so time spent
queueing (for a free connection, in the server's backlog) is part of it.

It keeps ``C`` keep-alive HTTP/1.1 connections open (a fixed pool, as wrk2
does); a request that finds them all busy waits for one, and that wait counts
in its latency. Responses are parsed with httptools on uvloop when they are
installed (uvicorn[standard] brings both), so the driver stays cheap beside the
server it measures on a two-core machine.

The driver checks itself. For each request it records how late *it* was
(``driver lag``: the time between the request's due time and the moment the
dispatcher got to it, minus any time it spent waiting for a busy connection,
which is the server's doing). If it could not send every scheduled request, or
its lag's p99 exceeds ``MAX_DRIVER_LAG_P99_MS``, the result says
``schedule_kept: false`` with the reason, and ``bench.run`` marks the row
"invalid" instead of reporting a latency the driver itself inflated.

Output: one line ``BENCH_JSON {...}`` on stdout (read by ``bench.load``).
The request file has the format of ``bench/lua/cycle.lua``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

# A scheduled request the driver reached more than this late at p99 makes the
# run "schedule not kept": on a 50 ms latency target, a few milliseconds of the
# driver's own lateness is noise, tens are not.
MAX_DRIVER_LAG_P99_MS = 5.0
END_TIMEOUT_S = 30.0  # answers still outstanding this long after the last send are failures


def percentile(sorted_ms: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_ms:
        return 0.0
    k = max(0, min(len(sorted_ms) - 1, math.ceil(p / 100 * len(sorted_ms)) - 1))
    return round(sorted_ms[k], 3)


def summary(values: list[float]) -> dict[str, float]:
    values.sort()
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": round(values[-1], 3) if values else 0.0,
        "mean": round(sum(values) / len(values), 3) if values else 0.0,
    }


def judge_schedule(
    scheduled: int, sent: int, lag_p99_ms: float, *, exhausted: bool
) -> tuple[bool, str]:
    """Whether the driver kept its schedule, and if not, why (for the report)."""
    reasons = []
    if exhausted:
        reasons.append(f"request list ran out after {sent:,} of {scheduled:,} scheduled")
    elif sent < scheduled:
        reasons.append(f"sent {sent:,} of {scheduled:,} scheduled requests")
    if lag_p99_ms > MAX_DRIVER_LAG_P99_MS:
        reasons.append(
            f"driver lag p99 {lag_p99_ms:.1f} ms > {MAX_DRIVER_LAG_P99_MS:g} ms "
            "(the driver itself fell behind)"
        )
    return (not reasons, "; ".join(reasons))


def encode_request(method: str, path: str, token: str, body: str, host: str) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    data = body.encode("utf-8")
    if data or method in ("POST", "PUT", "PATCH"):
        head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + data


def read_request_file(path: str, host: str) -> list[bytes]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            method, p, token, body = line.rstrip("\n").split("\t", 3)
            out.append(encode_request(method, p, token, body, host))
    if not out:
        raise ValueError(f"no requests in {path}")
    return out


@dataclass
class Stats:
    latency_ms: list[float] = field(default_factory=list)  # from the intended send time
    service_ms: list[float] = field(default_factory=list)  # from the actual send time
    lag_ms: list[float] = field(default_factory=list)  # the driver's own lateness
    statuses: Counter[str] = field(default_factory=Counter)
    socket_errors: int = 0
    conn_waits: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


# uvicorn closes a keep-alive connection idle for 5 s (its --timeout-keep-alive default)
IDLE_EXPIRY_S = 4.0


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, driver: Driver) -> None:
        import httptools

        self.driver = driver
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.intended = 0.0
        self.sent = 0.0
        self.busy = False
        self.closed = False
        self.released = time.perf_counter()  # when it last became idle

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport: no isinstance
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:  # httptools.HttpParserError and its subclasses
            self._fail()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy:
            self._fail()
        self.driver.lost(self)

    # httptools callbacks
    def on_message_complete(self) -> None:
        if not self.busy:
            return
        now = time.perf_counter()
        self.busy = False
        status = self.parser.get_status_code()
        keep = self.parser.should_keep_alive()
        self.driver.done(self, status, now)
        if not keep and self.transport is not None:
            self.transport.close()
        else:
            self.driver.release(self)

    def send(self, data: bytes, intended: float) -> None:
        assert self.transport is not None
        self.busy = True
        self.intended = intended
        self.sent = time.perf_counter()
        self.transport.write(data)

    def _fail(self) -> None:
        if self.busy:
            self.busy = False
            self.driver.failed(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Driver:
    def __init__(
        self,
        url: str,
        requests: list[bytes],
        *,
        rate: float,
        duration: float,
        connections: int,
        once: bool,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.requests = requests
        self.rate = rate
        self.duration = duration
        self.connections = connections
        self.once = once
        self.stats = Stats()
        self.idle: deque[Connection] = deque()
        self.all: set[Connection] = set()
        self.freed = asyncio.Event()
        self.drained = asyncio.Event()

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        self.all.add(conn)
        return conn

    # called by connections
    def done(self, conn: Connection, status: int, now: float) -> None:
        s = self.stats
        s.latency_ms.append((now - conn.intended) * 1000)
        s.service_ms.append((now - conn.sent) * 1000)
        s.statuses[str(status)] += 1
        self._finished()

    def failed(self, conn: Connection) -> None:
        self.stats.socket_errors += 1
        self._finished()

    def _finished(self) -> None:
        self.stats.in_flight -= 1
        if self.stats.in_flight == 0:
            self.drained.set()

    def release(self, conn: Connection) -> None:
        conn.released = time.perf_counter()
        self.idle.append(conn)
        self.freed.set()

    def lost(self, conn: Connection) -> None:
        self.all.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self.freed.set()  # a replacement may be opened

    async def _acquire(self) -> Connection:
        while True:
            while self.idle:
                # the most recently used first: the others may idle out (the
                # server closes a keep-alive connection after a few idle seconds)
                conn = self.idle.pop()
                if conn.closed:
                    continue
                if time.perf_counter() - conn.released < IDLE_EXPIRY_S:
                    return conn
                # as HTTP clients do (httpx's keep-alive expiry): not reused once it
                # may be about to be closed by the server, whose close would race the
                # request (a socket error that is the driver's, not the server's)
                self.all.discard(conn)
                if conn.transport is not None:
                    conn.transport.close()
            if len(self.all) < self.connections:
                try:
                    return await self._open()
                except OSError:
                    self.stats.socket_errors += 1
                    await asyncio.sleep(0.01)
                    continue
            self.freed.clear()
            await self.freed.wait()

    async def run(self) -> dict[str, Any]:
        for _ in range(self.connections):
            self.idle.append(await self._open())
        gc.collect()
        gc.freeze()  # the request list never changes: keep the collector off it
        gc.disable()
        scheduled = max(1, round(self.rate * self.duration))
        interval = 1.0 / self.rate
        s = self.stats
        cpu0 = time.process_time()
        start = time.perf_counter() + 0.02
        sent = 0
        exhausted = False
        debt = 0.0  # time spent waiting for a busy connection since last on schedule
        n = len(self.requests)
        for i in range(scheduled):
            if i >= n and self.once:
                exhausted = True
                break
            intended = start + i * interval
            delay = intended - time.perf_counter()
            if delay > 0:
                debt = 0.0
                # uvloop's timers count whole milliseconds and may wake a little
                # early: never send before the due time
                while delay > 0:
                    await asyncio.sleep(delay)
                    delay = intended - time.perf_counter()
            reached = time.perf_counter()
            s.lag_ms.append(max(0.0, reached - intended - debt) * 1000)
            if self.idle:
                conn = await self._acquire()
            else:
                s.conn_waits += 1
                conn = await self._acquire()
                debt += time.perf_counter() - reached
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
            self.drained.clear()
            conn.send(self.requests[i % n], intended)
            sent += 1
            if i % 64 == 63:
                await asyncio.sleep(0)  # let answers in when the driver is behind
        timed_out = 0
        if s.in_flight:
            try:
                await asyncio.wait_for(self.drained.wait(), END_TIMEOUT_S)
            except TimeoutError:
                timed_out = s.in_flight
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        for conn in list(self.all):
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)
        gc.enable()
        lag = summary(s.lag_ms)
        kept, why = judge_schedule(scheduled, sent, lag["p99"], exhausted=exhausted)
        done = len(s.latency_ms)
        return {
            "target_rate": self.rate,
            "scheduled": scheduled,
            "sent": sent,
            "requests": done,
            # requests sent per second of schedule (the schedule's rate when every one went)
            "send_rate": sent / (scheduled * interval),
            "duration_s": round(elapsed, 3),
            "latency_ms": summary(s.latency_ms),
            "service_ms": summary(s.service_ms),
            "driver_lag_ms": lag,
            "statuses": dict(s.statuses),
            "socket_errors": s.socket_errors + timed_out,
            "timed_out": timed_out,
            "conn_waits": s.conn_waits,
            "max_in_flight": s.max_in_flight,
            "connections": self.connections,
            "exhausted": exhausted,
            "driver_cpu_s": round(cpu, 3),
            "schedule_kept": kept,
            "schedule_note": why,
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        }


def drive(
    url: str,
    request_file: str,
    *,
    rate: float,
    duration: float,
    connections: int,
    once: bool = False,
) -> dict[str, Any]:
    if rate <= 0 or duration <= 0 or connections <= 0:
        raise ValueError("rate, duration and connections must be positive")
    host = urlsplit(url).netloc
    requests = read_request_file(request_file, host)

    async def main() -> dict[str, Any]:
        driver = Driver(
            url, requests, rate=rate, duration=duration, connections=connections, once=once
        )
        return await driver.run()

    try:
        import uvloop
    except ImportError:  # plain asyncio: slower, still correct (and it says which loop ran)
        return asyncio.run(main())
    return uvloop.run(main())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.openloop", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("url")
    p.add_argument("file")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds of schedule")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    p.add_argument("--once", action="store_true", help="send each request at most once")
    args = p.parse_args(argv)
    out = drive(
        args.url,
        args.file,
        rate=args.rate,
        duration=args.duration,
        connections=args.connections,
        once=args.once,
    )
    sys.stdout.write("BENCH_JSON " + json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip the interpreter's teardown of the frozen request list


if __name__ == "__main__":
    sys.exit(main())
