"""The web console in real headless Chromium against a live gateway, on both databases.

The gateway runs as a subprocess with the demo task force; the shelter's key
file is sealed with a passphrase first. ``console/e2e/loop.mjs`` (Playwright,
Debian's Chromium, axe-core) then does the whole loop only through the page:
the shelter's caseworker unlocks the sealed file (Argon2id in a Web Worker,
with progress), sets the demo's real witness and a quorum of 1 in Settings
(every checkpoint after is asked with ``?cosigned=1`` and its cosignature
verified in the page), finds legal aid and the police unit through the
service-directory search, sends with ``narrative`` to legal aid only (with
progress); the liaison's inbox
shows it and the liaison sees only ``full_name`` (in the DOM and in every
response body it received); legal aid accepts with a note, by keyboard; the
shelter sees "accepted" and the note, revokes the police cell; the liaison's
next open shows nothing. Throughout: no request leaves the origin; no private
key, passphrase or field value in any request or browser storage; the CSP
exact; a reload asks for the key file again; axe finds no serious or
critical violation; screenshots go to ``console/screenshots/``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.client.keyfile import KeyFile
from app.crypto.encoding import b64url_encode
from tests.console import node
from tests.console.test_console_route import EXPECTED_CSP
from tests.demo_server import demo_server

pytestmark = pytest.mark.slow  # headless Chromium against a live server


SERVER = str(Path(sys.executable).parent / "refgate-server")
PASSPHRASE = "harbor house night shift 2026"


@pytest.fixture
def gateway(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with demo_server(tmp_path, database_url=database_url, clean_env=True, timeout=60) as server:
        yield server.url, server.keys


def test_caseworker_and_liaison_work_a_referral_in_the_browser(
    gateway: tuple[str, Path], backend: str, tmp_path: Path
) -> None:
    chromium = node.chromium()
    node.built_console()
    url, demo = gateway
    r = httpx.get(f"{url}/console/")
    assert r.status_code == 200, r.text
    assert r.headers["content-security-policy"] == EXPECTED_CSP

    files = {name: demo / f"{stem}.key.json"
             for name, stem in (("shelter", "shelter"), ("legal", "legal-aid"),
                                ("police", "police"))}
    loaded = {name: KeyFile.load(path) for name, path in files.items()}
    sealed = tmp_path / "shelter.sealed.json"
    # sealed as `refgate keygen --passphrase` seals (Argon2id, moderate: 256 MiB in the page)
    sealed.write_text(json.dumps(loaded["shelter"].to_json(PASSPHRASE.encode())))
    task_force = json.loads((demo / "task-force.json").read_text())
    names = {}
    for m in task_force["members"]:
        for name, k in loaded.items():
            if m["agency_id"] == k.agency_id:
                names[name] = m["name"]
    # the demo's own witness (a separate process with its own key) cosigns the checkpoints
    witness = re.search(r"local witness at \S+, verifier key (\S+)",
                        (tmp_path / "serve.log").read_text())
    assert witness is not None, "the demo gateway runs a local witness"
    config = {
        "url": url,
        "witness": witness.group(1),
        "chromium": chromium,
        "csp": EXPECTED_CSP,
        "passphrase": PASSPHRASE,
        "keys": {"shelter": str(sealed), "legal": str(files["legal"]),
                 "police": str(files["police"])},
        "names": names,
        "debug": str(tmp_path),
        "private_keys": [b64url_encode(getattr(k, part)) for k in loaded.values()
                         for part in ("enc_private", "sig_seed", "auth_seed")],
        # one backend writes the committed screenshots; the other checks the same views
        "screenshots": str(node.CONSOLE / "screenshots") if backend == "sqlite" else None,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    done = node.run([node.node(), "e2e/loop.mjs", str(tmp_path / "config.json")], timeout=600)
    assert "browser loop ok" in done.stdout
