"""The README's walkthrough, run as written against `refgate-server serve --demo`.

One real server process (embedded SQLite, the local witness beside it, demo key
files pinning the log key and the witness with a quorum of one), and the
`refgate` CLI as a user types it: find by service, send by agency name, open,
close the loop, revoke, access report, and `audit verify --full`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.demo_server import demo_server

pytestmark = pytest.mark.slow  # the README walkthrough against a live server


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    with demo_server(tmp_path, timeout=90) as server:
        yield server.url, server.keys, server.env


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
