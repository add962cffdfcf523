"""``/docs/`` in real headless Chromium: Swagger UI from bundled assets, the console's CSP.

The gateway runs as a subprocess (``refgate-server serve --demo``);
``console/e2e/docs.mjs`` opens ``/docs``, which must list every operation of
``/openapi.json`` and show an operation's description, with the CSP header
exact, no CSP violation or other console error, no failed request and no
request to another origin. The route's headers are checked here too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.console import node
from tests.console.test_console_route import EXPECTED_CSP
from tests.demo_server import demo_server


@pytest.fixture
def gateway(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with demo_server(tmp_path, database_url=database_url, clean_env=True, timeout=90) as server:
        yield server.url, server.keys


def test_docs_lists_every_operation_under_the_console_csp(
    gateway: tuple[str, Path], tmp_path: Path
) -> None:
    chromium = node.chromium()
    node.built_console()
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
