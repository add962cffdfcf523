"""Load drivers: wrk with ``bench/lua/cycle.lua``, or an in-Python httpx driver.

Both take a request file (one ``METHOD\\tPATH\\tTOKEN\\tBODY`` per line, see
``cycle.lua``) and return the same ``LoadResult``. wrk is the instrument for
real numbers; the Python driver exists so the smoke mode runs anywhere (it is
itself CPU-bound and competes with the server, so its numbers are only sanity
checks).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

LUA = Path(__file__).resolve().parent / "lua" / "cycle.lua"
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


def _percentile(sorted_ms: Sequence[float], p: float) -> float:
    if not sorted_ms:
        return 0.0
    k = max(0, min(len(sorted_ms) - 1, math.ceil(p / 100 * len(sorted_ms)) - 1))
    return round(sorted_ms[k], 3)


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
