"""The README's walkthrough, run as written against `refgate-server serve --demo`.

One real server process (embedded SQLite, the local witness beside it, demo key
files pinning the log key and the witness with a quorum of one), and the
`refgate` CLI as a user types it: find by service, send by agency name, open,
close the loop, revoke, access report, and `audit verify --full`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow  # the README walkthrough against a live server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    with socket.socket() as s:  # the witness listens on port + 100
        s.bind(("127.0.0.1", port + 100))
    return port


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    port = _free_port()
    env = {**os.environ, "REFGATE_DATA_DIR": str(tmp_path / "data")}
    env.pop("REFGATE_AUDIT__WITNESSES", None)
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.server_cli", "serve", "--demo", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the demo server did not start"
            time.sleep(0.5)
        yield url, tmp_path / "data" / "demo", env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _refgate(env: dict[str, str], key: Path, *args: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "app.client.cli", "--key-file", str(key), *args],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, f"refgate {' '.join(args)}\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr
    return run.stdout


def test_the_readme_walkthrough_runs_as_written(
    demo: tuple[str, Path, dict[str, str]],
) -> None:
    _, d, env = demo
    shelter, legal, police = d / "shelter.key.json", d / "legal-aid.key.json", d / "police.key.json"
    found = _refgate(env, shelter, "find", "--service", "immigration_legal", "--language", "es")
    assert "Eastside Legal Aid Clinic" in found
    assert "County Human Trafficking Unit" in _refgate(env, shelter, "find", "--service",
                                                       "investigation")
    sent = _refgate(
        env, shelter, "send", "--to", "Eastside Legal", "--to", "County Human",
        "--field", "full_name=Maria Example",
        "--field", "narrative=Recruited with a false job offer.",
        "--consent", "full_name:Eastside Legal:service_provision",
        "--consent", "full_name:County Human:investigation",
        "--consent", "narrative:Eastside Legal:service_provision",
        "--urgency", "urgent", "--service", "legal",
    )
    match = re.search(r"referral ([0-9a-f-]{36})", sent)
    assert match, sent
    rid = match.group(1)
    assert rid in _refgate(env, legal, "inbox")
    assert "Recruited with a false job offer." in _refgate(env, legal, "show", rid)
    police_view = _refgate(env, police, "show", rid)
    assert "Maria Example" in police_view
    assert "narrative" not in police_view
    _refgate(env, legal, "status", rid, "accepted", "--note", "Intake Monday 10:00")
    _refgate(env, shelter, "revoke", rid, "--field", "full_name", "--recipient", "County Human")
    assert rid not in _refgate(env, police, "inbox")
    report = _refgate(env, shelter, "audit", "report", rid)
    assert "referral:read" in report
    verified = _refgate(env, d / "auditor.key.json", "audit", "verify", "--full")
    assert "cosigned by 1 of 1 trusted witness" in verified
    assert "OK: audit log verified" in verified
