"""`refgate-server serve` on a port that is taken says so, and how to choose another."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.demo_server import WITNESS_PORT_OFFSET, demo_server


def test_serve_on_a_busy_port_says_which_and_how_to_choose_another(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "app.server_cli", "serve", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
            env={"REFGATE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )
    assert run.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in run.stderr
    assert f"./dev serve --port {port + 1}" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "refgate.db").exists(), "nothing was set up before the refusal"



def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.TransportError:
        return False
    return True


def test_a_killed_demo_gateway_takes_its_witness_with_it(tmp_path: Path) -> None:
    """``serve --demo`` starts a local witness as its child; a SIGKILL of the gateway (which
    skips its clean-up) must not leave that witness running and holding port + 100."""
    with demo_server(tmp_path) as server:
        witness = f"http://127.0.0.1:{server.port + WITNESS_PORT_OFFSET}/"
        deadline = time.monotonic() + 30  # the witness may still be binding its port
        while not _answers(witness):
            assert time.monotonic() < deadline, "the demo witness did not start"
            time.sleep(0.2)
        server.process.kill()  # the gateway process only, not its process group
        server.process.wait()
        deadline = time.monotonic() + 30
        while _answers(witness):
            assert time.monotonic() < deadline, "the witness outlived its gateway"
            time.sleep(0.5)
