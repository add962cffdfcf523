"""``/docs/`` in real headless Chromium: Swagger UI from bundled assets, the console's CSP.

The gateway runs as a subprocess (``refgate-server serve --demo``);
``console/e2e/docs.mjs`` opens ``/docs``, which must list every operation of
``/openapi.json`` and show an operation's description, with the CSP header
exact, no CSP violation or other console error, no failed request and no
request to another origin. The route's headers are checked here too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.client.test_cli import free_port
from tests.console import node
from tests.console.test_console_route import EXPECTED_CSP


@pytest.fixture
def gateway(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``serve --demo`` in its own process group, so its local witness stops with it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFGATE_")}
    env |= {"REFGATE_DATA_DIR": str(tmp_path / "data"), "REFGATE_DATABASE_URL": database_url}
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.server_cli", "serve", "--demo", "--port", str(port)],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the gateway did not start:\n" + log_path.read_text())
                time.sleep(0.2)
            yield url, tmp_path / "data" / "demo"
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def test_docs_lists_every_operation_under_the_console_csp(
    gateway: tuple[str, Path], tmp_path: Path
) -> None:
    chromium = node.chromium()
    npm = node.npm()
    node.run([npm, "run", "--silent", "build"])
    url, _ = gateway
    page = httpx.get(f"{url}/docs/")
    assert page.status_code == 200, page.text
    assert page.headers["content-security-policy"] == EXPECTED_CSP
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text  # the start-up script is a file
    assert "http" not in page.text.replace('href="../openapi.json"', "")  # nothing remote
    assert httpx.get(f"{url}/redoc").headers["location"] == "/docs/"
    document = httpx.get(f"{url}/openapi.json").json()
    operations = sorted(f"{method} {path}" for path, item in document["paths"].items()
                        for method in item if method in ("get", "post", "put", "patch",
                                                         "delete"))
    assert len(operations) > 30
    config = {"url": url, "chromium": chromium, "csp": EXPECTED_CSP, "operations": operations,
              "screenshot": str(tmp_path / "docs.png")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    done = node.run([node.node(), "e2e/docs.mjs", str(tmp_path / "config.json")], timeout=300)
    assert f"docs ok: {len(operations)} operations listed" in done.stdout
