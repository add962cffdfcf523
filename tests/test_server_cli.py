"""`refgate-server serve` on a port that is taken says so, and how to choose another."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


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


def _free_port_pair() -> int:
    """A port free for the gateway with port + 100 free for its demo witness."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port + 100 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 100))
            except OSError:
                continue
        return port


def _answers(url: str) -> bool:
    import httpx

    try:
        httpx.get(url, timeout=1)
    except httpx.TransportError:
        return False
    return True


def test_a_killed_demo_gateway_takes_its_witness_with_it(tmp_path: Path) -> None:
    """``serve --demo`` starts a local witness as its child; a SIGKILL of the gateway (which
    skips its clean-up) must not leave that witness running and holding port + 100."""
    import os
    import signal
    import time

    port = _free_port_pair()
    env = {**os.environ, "REFGATE_DATA_DIR": str(tmp_path / "data")}
    env.pop("REFGATE_AUDIT__WITNESSES", None)
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.server_cli", "serve", "--demo", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    witness = f"http://127.0.0.1:{port + 100}/"
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"http://127.0.0.1:{port}/health/ready"):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the demo server did not start"
            time.sleep(0.5)
        assert _answers(witness), "the demo witness is not running"

        server.kill()  # the gateway process only, not its process group
        server.wait()
        deadline = time.monotonic() + 30
        while _answers(witness):
            assert time.monotonic() < deadline, "the witness outlived its gateway"
            time.sleep(0.5)
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
