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
