"""Start and stop the servers under test, and watch their memory.

Each server runs in its own session (process group) so that stopping it stops
its workers too; only processes started here are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bench.dataset import ROOT, clean_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    log: IO[bytes]

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def _start(name: str, cmd: list[str], env: dict[str, str], port: int, log_path: Path) -> Server:
    log = log_path.open("wb")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(name, proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(server.base_url + "/health/live", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name} did not answer within 60 s; see {log_path}")


# The load comes from a handful of clients on one address, far beyond the per-client
# limits: keep the limiter counting (its statement is part of every request's cost)
# but never refusing.
UNLIMITED = str(10**9)
RATE_LIMITS_RAISED = {
    f"REFGATE_RATELIMIT__{name}": UNLIMITED
    for name in (
        "TOKEN_PER_CLIENT",
        "TOKEN_PER_ADDRESS",
        "API_PER_CLIENT",
        "API_BURST",
        "ANONYMOUS_PER_ADDRESS",
    )
}


def start_refgate(
    sa_url: str, data_dir: Path, port: int, workers: int, log_path: Path, *, rate_limit: bool
) -> Server:
    env = clean_env(
        {
            "REFGATE_ENV": "production",
            "REFGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "REFGATE_DATABASE_URL": sa_url,
            "REFGATE_DATA_DIR": str(data_dir),
            "REFGATE_AUTH__ACCESS_TOKEN_TTL": "3600",
            "REFGATE_AUDIT__SEQUENCER_ENABLED": "true",
            "REFGATE_RATELIMIT__ENABLED": "true" if rate_limit else "false",
            **RATE_LIMITS_RAISED,
        }
    )
    cmd = [sys.executable, "-m", "app.server_cli", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers)]
    return _start("refgate", cmd, env, port, log_path)


def start_baseline(pg_url: str, port: int, workers: int, log_path: Path) -> Server:
    env = clean_env({"BENCH_BASELINE_DSN": pg_url})
    cmd = [sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    cmd += ["--no-access-log", "--no-server-header"]
    return _start("baseline", cmd, env, port, log_path)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: ppid follows it
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def worker_pids(master: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing children running spawn_main)."""
    pids = []
    for pid in _children(master):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline or b"multiprocessing-fork" in cmdline:
            pids.append(pid)
    return sorted(pids) or [master]


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(master: int) -> float:
    """User + system CPU time consumed so far by the server's workers (and master).

    Unlike throughput, CPU per request does not depend on what else the machine
    runs, so it is the steadier number on a shared box.
    """
    total = 0
    for pid in {master, *worker_pids(master)}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return total / _TICKS


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class RssSampler:
    """Samples VmRSS and VmHWM of each worker of ``master`` every ``interval`` seconds."""

    master: int
    interval: float = 0.5
    peak_kib: dict[int, dict[str, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        for pid in worker_pids(self.master):
            try:
                now = _status_kib(pid)
            except OSError:
                continue
            peak = self.peak_kib.setdefault(pid, {"VmRSS": 0, "VmHWM": 0})
            for key, value in now.items():
                peak[key] = max(peak[key], value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, dict[str, Any]]:
        """Peak memory per worker seen; ``exited``: a worker gone before the end
        (uvicorn's supervisor replaces a worker that misses its health check)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        alive = set(worker_pids(self.master))
        return {
            str(pid): {
                "peak_rss_mb": round(v["VmRSS"] / 1024, 1),
                "vm_hwm_mb": round(v["VmHWM"] / 1024, 1),
                "exited": pid not in alive,
            }
            for pid, v in sorted(self.peak_kib.items())
        }


class Profiler:
    """py-spy attached to every worker of a server for one scenario (``--profile``)."""

    def __init__(self, master: int, out_dir: Path, name: str, duration: float) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        py_spy = Path(sys.executable).with_name("py-spy")
        exe = str(py_spy) if py_spy.exists() else "py-spy"
        out_dir.mkdir(parents=True, exist_ok=True)
        for pid in worker_pids(master):
            cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(duration))]
            cmd += ["--rate", "200", "--format", "raw", "--nonblocking"]
            cmd += ["-o", str(out_dir / f"{name}-{pid}.txt")]
            self.procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )

    def wait(self) -> None:
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.terminate()
