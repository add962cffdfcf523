"""Load drivers: wrk with ``bench/lua/cycle.lua``, or an in-Python httpx driver
(closed-loop, for the maximum rate), and ``bench.openloop`` (constant rate).

All take a request file (one ``METHOD\\tPATH\\tTOKEN\\tBODY`` per line, see
``cycle.lua``) and return a ``LoadResult``. wrk is the instrument for the
maximum rate; the Python closed-loop driver exists so the smoke mode runs
anywhere (it is itself CPU-bound and competes with the server, so its numbers
are only sanity checks). The constant-rate driver runs in its own process
(``run_constant_rate``): wrk 4 has no fixed-rate mode.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import openloop

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "lua" / "cycle.lua"
OK_STATUSES = frozenset({200, 201})


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    token: str = ""
    body: str = ""

    def line(self) -> str:
        for part in (self.method, self.path, self.token):
            if "\t" in part or "\n" in part:
                raise ValueError("request parts must not contain tabs or newlines")
        if "\n" in self.body:
            raise ValueError("a request body must be one line")
        return f"{self.method}\t{self.path}\t{self.token}\t{self.body}\n"


def write_requests(path: Path, requests: Sequence[Request]) -> Path:
    if not requests:
        raise ValueError(f"no requests for {path.name}")
    with path.open("w", encoding="utf-8") as fh:
        for r in requests:
            fh.write(r.line())
    return path


def read_requests(path: Path) -> list[Request]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            method, p, token, body = line.rstrip("\n").split("\t", 3)
            out.append(Request(method, p, token, body))
    return out


@dataclass
class LoadResult:
    driver: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    socket_errors: int = 0
    exhausted: bool = False
    raw: str = field(default="", repr=False)

    @property
    def failures(self) -> int:
        bad = sum(c for s, c in self.statuses.items() if int(s) not in OK_STATUSES)
        return bad + self.socket_errors

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("raw")
        out["failures"] = self.failures
        return out


@dataclass
class ConstantRateResult(LoadResult):
    """An open-loop run: ``latency_ms`` is measured from each request's intended send time."""

    target_rate: float = 0.0
    scheduled: int = 0
    sent: int = 0
    service_ms: dict[str, float] = field(default_factory=dict)
    driver_lag_ms: dict[str, float] = field(default_factory=dict)
    conn_waits: int = 0
    max_in_flight: int = 0
    driver_cpu_s: float = 0.0
    schedule_kept: bool = False
    schedule_note: str = ""
    event_loop: str = ""


def run_constant_rate(
    base_url: str,
    request_file: Path,
    *,
    rate: float,
    duration: float,
    connections: int,
    once: bool = False,
) -> ConstantRateResult:
    """Drive ``rate`` requests/s for ``duration`` s with ``bench.openloop`` in its own process."""
    cmd = [sys.executable, "-m", "bench.openloop", base_url, str(request_file)]
    cmd += ["--rate", repr(rate), "--duration", repr(duration), "--connections", str(connections)]
    if once:
        cmd.append("--once")
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=duration + openloop.END_TIMEOUT_S + 60,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(
            f"bench.openloop failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return ConstantRateResult(
        driver="openloop",
        connections=data["connections"],
        duration_s=data["duration_s"],
        requests=data["requests"],
        rps=data["send_rate"],
        latency_ms=data["latency_ms"],
        statuses=data["statuses"],
        socket_errors=data["socket_errors"],
        exhausted=data["exhausted"],
        raw=proc.stdout,
        target_rate=data["target_rate"],
        scheduled=data["scheduled"],
        sent=data["sent"],
        service_ms=data["service_ms"],
        driver_lag_ms=data["driver_lag_ms"],
        conn_waits=data["conn_waits"],
        max_in_flight=data["max_in_flight"],
        driver_cpu_s=data["driver_cpu_s"],
        schedule_kept=data["schedule_kept"],
        schedule_note=data["schedule_note"],
        event_loop=data["event_loop"],
    )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    base_url: str,
    request_file: Path,
    *,
    connections: int,
    duration: float,
    threads: int,
    once: bool = False,
) -> LoadResult:
    threads = max(1, min(threads, connections))
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, math.ceil(duration))}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(LUA),
        base_url,
        "--",
        str(request_file),
        str(threads),
        "once" if once else "loop",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration + 120)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[:2000]}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    secs = data["duration_us"] / 1e6
    lat = data["latency_us"]
    errors = data["errors"]
    return LoadResult(
        driver="wrk",
        connections=connections,
        duration_s=round(secs, 3),
        requests=data["requests"],
        rps=data["requests"] / secs if secs else 0.0,
        latency_ms={
            k: round(lat[k] / 1000, 3) for k in ("p50", "p90", "p95", "p99", "max", "mean")
        },
        statuses={str(k): v for k, v in data["statuses"].items()},
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        exhausted=bool(data["exhausted"]),
        raw=proc.stdout,
    )


_percentile = openloop.percentile


async def _drive_python(
    base_url: str, requests: Sequence[Request], connections: int, duration: float, once: bool
) -> LoadResult:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors = 0
    position = 0
    exhausted = False
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            nonlocal position, errors, exhausted
            while time.perf_counter() < deadline:
                if position >= len(requests):
                    if once:
                        exhausted = True
                        return
                    position = 0
                r = requests[position]
                position += 1
                headers = {"Authorization": f"Bearer {r.token}"} if r.token else {}
                if r.body:
                    headers["Content-Type"] = "application/json"
                t0 = time.perf_counter()
                try:
                    resp = await client.request(
                        r.method, r.path, headers=headers, content=r.body.encode() or None
                    )
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[str(resp.status_code)] += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    done = len(latencies)
    return LoadResult(
        driver="python",
        connections=connections,
        duration_s=round(elapsed, 3),
        requests=done,
        rps=done / elapsed if elapsed else 0.0,
        latency_ms={
            "p50": _percentile(latencies, 50),
            "p90": _percentile(latencies, 90),
            "p95": _percentile(latencies, 95),
            "p99": _percentile(latencies, 99),
            "max": round(latencies[-1], 3) if latencies else 0.0,
            "mean": round(sum(latencies) / done, 3) if done else 0.0,
        },
        statuses=dict(statuses),
        socket_errors=errors,
        exhausted=exhausted,
    )


def run_python(
    base_url: str,
    request_file: Path,
    *,
    connections: int,
    duration: float,
    once: bool = False,
) -> LoadResult:
    return asyncio.run(
        _drive_python(base_url, read_requests(request_file), connections, duration, once)
    )


def run_load(
    driver: str,
    base_url: str,
    request_file: Path,
    *,
    connections: int,
    duration: float,
    threads: int = 1,
    once: bool = False,
) -> LoadResult:
    if driver == "wrk":
        return run_wrk(
            base_url,
            request_file,
            connections=connections,
            duration=duration,
            threads=threads,
            once=once,
        )
    return run_python(base_url, request_file, connections=connections, duration=duration, once=once)
