"""``refgate-server serve --demo`` in a process of its own, for the tests that need the real
thing (the README walkthrough, the SDK installed alone, the console and /docs in Chromium, the
CLI against a live gateway).

The server runs in a new session (process group) with its local witness, and is stopped by
signalling the group, so nothing it started outlives the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

WITNESS_PORT_OFFSET = 100  # app.witness.demo.PORT_OFFSET


@dataclass(frozen=True)
class DemoServer:
    url: str
    port: int
    keys: Path  # the demo members' key files (data/demo)
    env: dict[str, str]  # the server's environment (REFGATE_DATA_DIR, database)
    process: subprocess.Popen[bytes]
    log: Path


def free_port_pair() -> int:
    """A free port whose port + 100 (the demo witness's) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port + WITNESS_PORT_OFFSET > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + WITNESS_PORT_OFFSET))
            except OSError:
                continue
        return port


def _ready(url: str, keys: Path) -> bool:
    try:
        answer = httpx.get(f"{url}/health/ready", timeout=2)
    except httpx.TransportError:
        return False
    return answer.status_code == 200 and (keys / "task-force.json").exists()


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is still there
    except ProcessLookupError:
        pass
    process.wait()


@contextmanager
def demo_server(
    tmp_path: Path, *, database_url: str | None = None, clean_env: bool = False,
    timeout: float = 120,
) -> Iterator[DemoServer]:
    """Start ``serve --demo`` with its data under ``tmp_path/data`` and wait until it is ready
    and the demo key files are written. ``clean_env`` drops every ``REFGATE_*`` variable of
    the test run (the server then sees only its data dir and ``database_url``)."""
    port = free_port_pair()
    env = {k: v for k, v in os.environ.items() if not (clean_env and k.startswith("REFGATE_"))}
    env.pop("REFGATE_AUDIT__WITNESSES", None)
    env["REFGATE_DATA_DIR"] = str(tmp_path / "data")
    if database_url is not None:
        env["REFGATE_DATABASE_URL"] = database_url
    url = f"http://127.0.0.1:{port}"
    keys = tmp_path / "data" / "demo"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.server_cli", "serve", "--demo", "--port", str(port)],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while not _ready(url, keys):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the demo gateway did not start:\n" + log_path.read_text())
                time.sleep(0.3)
            yield DemoServer(url, port, keys, env, process, log_path)
        finally:
            _stop(process)
