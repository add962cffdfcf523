"""Console part 2 in real headless Chromium against a live gateway, on both databases.

``console/e2e/part2.mjs`` drives the page one phase at a time; between phases
this test acts as the others would: the CLI, the administrator, the operator.

Onboarding: a new agency makes its keys on "Create my agency's keys"; the
downloaded sealed key file opens with the SDK and with ``refgate`` (CLI), its
public keys equal the public-key file's; the administrator, in the console,
onboards the agency and a caseworker client from that public-key file; the shelter sends it a
referral with ``refgate send``; its caseworker signs in to the console with the
sealed file (typing the ids it was given) and reads the consented field.

Audit: the shelter sends the police a referral and the police read it (CLI);
the shelter's access report in the console says "<police> read full_name under
investigation consent" with every event verified; the auditor finds that read,
verifies its inclusion proof in the page and exports NDJSON; then the test plays
the operator and rewrites the stored event by direct SQL (append-only triggers
dropped, as a database superuser can), and the console's "Verify" says in plain
words that the event no longer matches the signed log.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.client.keyfile import KeyFile
from app.crypto.canonical import canonical_json
from migrations import append_only
from tests.console import node
from tests.console.test_console_browser import gateway  # noqa: F401  (the live gateway fixture)
from tests.console.test_console_route import EXPECTED_CSP

pytestmark = pytest.mark.slow  # headless Chromium against a live server


BIN = Path(sys.executable).parent
PASSPHRASE = "new agency first night 2026"
NAME = "Riverside Anti-Trafficking Unit"
CASE_REF = "onboard-17"
FIELD = "Maria Example"


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"{cmd[:3]} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


def test_new_agency_onboarded_from_a_key_file_made_in_the_console(
    gateway: tuple[str, Path], backend: str, tmp_path: Path, database_url: str  # noqa: F811
) -> None:
    chromium = node.chromium()
    node.built_console()
    url, demo = gateway
    assert httpx.get(f"{url}/console/").status_code == 200
    key_out, public_out = tmp_path / "new.key.json", tmp_path / "new.public.json"
    out = tmp_path / "phase-out.json"
    config: dict[str, Any] = {
        "url": url, "chromium": chromium, "csp": EXPECTED_CSP, "passphrase": PASSPHRASE,
        "out": str(out), "keys": {"admin": str(demo / "admin.key.json")},
        "debug": str(tmp_path),
        "screenshots": str(node.CONSOLE / "screenshots") if backend == "sqlite" else None,
        "onboard": {"name": NAME, "key_out": str(key_out), "public_out": str(public_out),
                    "case_ref": CASE_REF, "field_value": FIELD},
    }
    config_path = tmp_path / "config.json"

    def phase(name: str) -> None:
        config_path.write_text(json.dumps(config))
        done = node.run([node.node(), "e2e/part2.mjs", str(config_path), name], timeout=300)
        assert f"part2 {name} ok" in done.stdout

    phase("onboard")

    # the console's sealed file: exactly the keygen format, opened by the SDK
    sealed = json.loads(key_out.read_text())
    assert set(sealed) == {"v", "server", "agency_id", "client_id", "role", "sealed"}
    assert sealed["server"] == url
    assert sealed["role"] == "caseworker"
    assert set(sealed["sealed"]) == {"kdf", "opslimit", "memlimit", "salt", "box"}
    assert not any(k in key_out.read_text() for k in ("enc_private", "sig_seed", "auth_seed"))
    key_out.chmod(0o600)
    opened = KeyFile.load(key_out, PASSPHRASE.encode())
    public = json.loads(public_out.read_text())
    assert public["name"] == NAME
    assert public["role"] == "caseworker"
    assert vars(opened.public_keys()) == {k: public[k] for k in ("enc_key", "sign_key", "auth_key")}

    # the administrator onboards it in the console from the public-key file
    phase("admin")
    ids = json.loads(out.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFGATE_")}
    env |= {"REFGATE_DATA_DIR": str(tmp_path / "data"), "REFGATE_DATABASE_URL": database_url,
            "NEW_PASSPHRASE": PASSPHRASE}
    agency = {"id": ids["agency_id"]}
    client = {"client_id": ids["client_id"]}
    _run([str(BIN / "refgate-server"), "sequence"], env, tmp_path)

    # the CLI opens the console's sealed file: configure a copy, then sign in with it
    cli_copy = tmp_path / "cli.key.json"
    cli_copy.write_text(key_out.read_text())
    cli_copy.chmod(0o600)
    refgate = str(BIN / "refgate")
    _run([refgate, "--key-file", str(cli_copy), "configure", "--agency-id", agency["id"],
          "--client-id", client["client_id"]], env, tmp_path)
    inbox = _run([refgate, "--key-file", str(cli_copy), "--passphrase-env", "NEW_PASSPHRASE",
                  "--json", "inbox"], env, tmp_path)
    assert json.loads(inbox.stdout)["items"] == []

    # the shelter sends the new agency a referral
    shelter = demo / "shelter.key.json"
    _run([refgate, "--key-file", str(shelter), "--server", url, "send", "--to", agency["id"],
          "--field", f"full_name={FIELD}", "--field", "narrative=Not for the new unit.",
          "--consent", f"full_name:{agency['id']}:investigation", "--service", "investigation",
          "--case-ref", CASE_REF], env, tmp_path)

    # its caseworker signs in to the console with the sealed file and reads the field
    config["onboard"]["ids"] = {"agency_id": agency["id"], "client_id": client["client_id"]}
    phase("newagency")


def _names(demo: Path) -> dict[str, str]:
    task_force = json.loads((demo / "task-force.json").read_text())
    ids = {stem: KeyFile.load(demo / f"{stem}.key.json").agency_id
           for stem in ("shelter", "police", "legal-aid")}
    return {stem: m["name"] for m in task_force["members"] for stem, i in ids.items()
            if m["agency_id"] == i}


async def _rewrite_read(database_url: str, referral_id: str, seq: int) -> None:
    """The operator, as a database superuser, rewrites who read the referral."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            row_id, canonical = (await conn.execute(text(
                "SELECT e.id, e.canonical FROM audit_event e JOIN audit_leaf l "
                "ON l.event_id = e.id WHERE l.seq = :s AND e.resource_id = :r"),
                {"s": seq, "r": referral_id})).one()
            bent = json.loads(canonical)
            bent["purpose"] = "service_provision"
            for stmt in append_only.drop(engine.dialect.name):
                await conn.execute(text(stmt))
            await conn.execute(text("UPDATE audit_event SET canonical = :c WHERE id = :i"),
                               {"c": canonical_json(bent).decode(), "i": row_id})
            for stmt in append_only.install(engine.dialect.name):
                await conn.execute(text(stmt))
    finally:
        await engine.dispose()


def test_auditor_verifies_a_read_in_the_browser_and_sees_the_operators_rewrite(
    gateway: tuple[str, Path], backend: str, tmp_path: Path, database_url: str  # noqa: F811
) -> None:
    chromium = node.chromium()
    node.built_console()
    url, demo = gateway
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFGATE_")}
    env |= {"REFGATE_DATA_DIR": str(tmp_path / "data"), "REFGATE_DATABASE_URL": database_url}
    refgate = str(BIN / "refgate")
    police = KeyFile.load(demo / "police.key.json").agency_id
    assert police is not None
    sent = _run([refgate, "--key-file", str(demo / "shelter.key.json"), "--server", url,
                 "--json", "send", "--to", police, "--field", f"full_name={FIELD}",
                 "--field", "narrative=Only the shelter knows this.",
                 "--consent", f"full_name:{police}:investigation",
                 "--service", "investigation", "--case-ref", "audit-17"], env, tmp_path)
    rid = json.loads(sent.stdout)["referral_id"]
    _run([refgate, "--key-file", str(demo / "police.key.json"), "--server", url, "show", rid],
         env, tmp_path)
    _run([str(BIN / "refgate-server"), "sequence"], env, tmp_path)

    out, export = tmp_path / "phase-out.json", tmp_path / "export.ndjson"
    config: dict[str, Any] = {
        "url": url, "chromium": chromium, "csp": EXPECTED_CSP, "passphrase": "",
        "secrets": [FIELD, "Only the shelter knows this."],
        "debug": str(tmp_path), "referral_id": rid, "out": str(out), "export_out": str(export),
        "screenshots": str(node.CONSOLE / "screenshots") if backend == "sqlite" else None,
        "keys": {"shelter": str(demo / "shelter.key.json"),
                 "auditor": str(demo / "auditor.key.json")},
        "names": {"police": _names(demo)["police"]},
    }
    config_path = tmp_path / "config.json"

    def phase(name: str) -> None:
        config_path.write_text(json.dumps(config))
        done = node.run([node.node(), "e2e/part2.mjs", str(config_path), name], timeout=300)
        assert f"part2 {name} ok" in done.stdout

    phase("report")
    phase("auditor")
    seq = json.loads(out.read_text())["seq"]
    exported = [json.loads(line) for line in export.read_text().splitlines()]
    assert any(e.get("seq") == seq or e.get("event", {}).get("resource_id") == rid
               for e in exported)

    asyncio.run(_rewrite_read(database_url, rid, seq))
    config["seq"] = seq
    phase("tampered")
