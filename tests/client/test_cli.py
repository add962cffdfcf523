"""The ``refgate`` CLI end to end against a live ``refgate-server`` (SQLite and PostgreSQL).

Everything runs as it would for an operator: the server is a subprocess, agencies
are onboarded with ``refgate-server create-agency``/``create-client`` from keys
made by ``refgate keygen``, and the referral goes through ``refgate send``,
``inbox``, ``show`` and ``status``. Independent commands run concurrently to
keep the file fast.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.client.cli import main

BIN = Path(sys.executable).parent
REFGATE = str(BIN / "refgate")
SERVER = str(BIN / "refgate-server")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


def run_all(cmds: Sequence[Sequence[str]], env: dict[str, str], cwd: Path) -> list[Result]:
    procs = [subprocess.Popen(list(c), env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in cmds]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        results.append(Result(p.returncode, out, err))
    return results


def ok_all(cmds: Sequence[Sequence[str]], env: dict[str, str], cwd: Path) -> list[Result]:
    results = run_all(cmds, env, cwd)
    for cmd, r in zip(cmds, results, strict=True):
        assert r.code == 0, f"{' '.join(cmd)} -> {r.code}\n{r.out}\n{r.err}"
    return results


def onboard_members(server_url: str, env: dict[str, str], cwd: Path) -> dict[str, str]:
    """A shelter and a legal-aid agency onboarded as an administrator and a new member do
    it (``refgate keygen``, ``refgate-server create-agency``/``create-client``, ``refgate
    configure``), then one sequencer pass; key files ``shelter.json`` and ``legal.json`` in
    ``cwd``. Returns the agency ids by member name."""
    members = [("shelter", "shelter", "caseworker"), ("legal", "legal_aid", "caseworker")]
    keygen = ok_all([[REFGATE, "--json", "--server", server_url, "keygen", "--out", f"{n}.json"]
                     for n, _, _ in members], env, cwd)
    public = {n: json.loads(r.out) for (n, _, _), r in zip(members, keygen, strict=True)}
    created = ok_all([[SERVER, "create-agency", "--name", f"{n} agency", "--kind", kind,
                       f"--enc-key={public[n]['enc_key']}", f"--sign-key={public[n]['sign_key']}"]
                      for n, kind, _ in members], env, cwd)
    ids = {n: json.loads(r.out)["id"] for (n, _, _), r in zip(members, created, strict=True)}
    clients = ok_all([[SERVER, "create-client", "--agency", ids[n], "--role", role,
                       f"--auth-key={public[n]['auth_key']}"] for n, _, role in members],
                     env, cwd)
    ok_all([[REFGATE, "--key-file", f"{n}.json", "configure", "--agency-id", ids[n],
             "--client-id", json.loads(r.out)["client_id"], "--role", role]
            for (n, _, role), r in zip(members, clients, strict=True)]
           + [[SERVER, "sequence"]], env, cwd)
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live(database_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFGATE_")}
    env |= {"REFGATE_DATA_DIR": str(tmp_path / "data"), "REFGATE_DATABASE_URL": database_url}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([SERVER, "serve", "--port", str(port)], env=env, cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, env
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def wait_ready(url: str, tmp_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail("the server did not become ready:\n" + (tmp_path / "server.log").read_text())


MEMBERS = [("shelter", "shelter", "caseworker"), ("legal", "legal_aid", "caseworker"),
           ("police", "law_enforcement", "liaison")]


def test_cli_round_trip_against_a_live_server(
    live: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = live

    def cli(name: str, *args: str, json_out: bool = False) -> list[str]:
        return [REFGATE, "--key-file", f"{name}.json", *(["--json"] if json_out else []), *args]

    keygen = ok_all([[REFGATE, "--json", "--server", url, "keygen", "--out", f"{n}.json"]
                     for n, _, _ in MEMBERS], env, tmp_path)
    public = {n: r.json() for (n, _, _), r in zip(MEMBERS, keygen, strict=True)}
    for name, _, _ in MEMBERS:
        assert (tmp_path / f"{name}.json").stat().st_mode & 0o777 == 0o600
    wait_ready(url, tmp_path)

    # "--key=value": a base64url key may begin with "-", which argparse takes for an option
    created = ok_all([[SERVER, "create-agency", "--name", f"{n} agency", "--kind", kind,
                       f"--enc-key={public[n]['enc_key']}", f"--sign-key={public[n]['sign_key']}"]
                      for n, kind, _ in MEMBERS], env, tmp_path)
    ids = {n: r.json()["id"] for (n, _, _), r in zip(MEMBERS, created, strict=True)}
    clients = ok_all([[SERVER, "create-client", "--agency", ids[n], "--role", role,
                       f"--auth-key={public[n]['auth_key']}"] for n, _, role in MEMBERS],
                     env, tmp_path)
    ok_all([cli(n, "configure", "--agency-id", ids[n], "--client-id", r.json()["client_id"],
                "--role", role)
            for (n, _, role), r in zip(MEMBERS, clients, strict=True)]
           + [[SERVER, "sequence"]], env, tmp_path)

    legal, police = ids["legal"], ids["police"]
    [sent] = ok_all([cli(
        "shelter", "send", "--to", legal, "--to", police,
        "--field", "full_name=Maria Example",
        "--field", "narrative=Recruited with a false job offer.",
        "--consent", f"full_name:{legal}:service_provision",
        "--consent", f"full_name:{police}:investigation",
        "--consent", f"narrative:{legal}:service_provision",
        "--urgency", "urgent", "--service", "legal", "--case-ref", "c-77", json_out=True,
    )], env, tmp_path)
    rid = sent.json()["referral_id"]

    inbox, police_show, legal_show, status = ok_all([
        cli("police", "inbox"),
        cli("police", "show", rid),
        cli("legal", "show", rid, json_out=True),
        cli("legal", "status", rid, "accepted", "--note", "Intake Tuesday 10:00"),
    ], env, tmp_path)
    assert rid in inbox.out
    assert "urgent" in inbox.out
    assert "full_name: Maria Example" in police_show.out
    assert "false job offer" not in police_show.out
    assert legal_show.json()["fields"] == {  # type: ignore[index]
        "full_name": "Maria Example", "narrative": "Recruited with a false job offer."
    }
    assert "accepted" in status.out

    sender_show, refused, verify = run_all([
        cli("shelter", "show", rid),
        cli("police", "status", rid, "completed"),
        cli("shelter", "audit", "verify", "--state-file", "audit-state.json"),
    ], env, tmp_path)
    assert sender_show.code == 0, sender_show.err
    assert "legal agency  accepted" in sender_show.out

    # people read names: FROM and TO columns, key ids verified against the pinned checkpoint
    police_inbox, sent_box, sent_ids, listing = ok_all([
        cli("police", "inbox"), cli("shelter", "inbox", "--sent"),
        [REFGATE, "--key-file", "shelter.json", "--ids", "inbox", "--sent"],
        cli("shelter", "agencies"),
    ], env, tmp_path)
    assert "FROM" in police_inbox.out
    assert "shelter agency" in police_inbox.out
    assert "1 referral\n" in police_inbox.out
    assert "TO" in sent_box.out
    assert "legal agency: accepted" in sent_box.out
    assert "police agency" in sent_box.out
    assert f"{legal}: accepted" in sent_ids.out
    assert "3 agencies;" in listing.out
    for name in ("shelter agency", "legal agency", "police agency"):
        [line] = [row for row in listing.out.splitlines() if row.startswith(name)]
        assert "  yes  " in line, listing.out
    assert public["legal"]["enc_key"] not in listing.out
    assert "note: Intake Tuesday 10:00" in sender_show.out
    assert refused.code == 2
    assert "409 Conflict" in refused.err
    assert verify.code == 0, verify.out + verify.err
    assert (tmp_path / "audit-state.json").exists()


# ---------------------------------------------------------------- no server needed


@pytest.fixture
def key_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("REFGATE_KEY_FILE", raising=False)
    path = tmp_path / "k.json"
    assert main(["--server", "http://127.0.0.1:9", "keygen", "--out", str(path)]) == 0
    assert main(["--key-file", str(path), "configure", "--agency-id", "a", "--client-id", "c"]) == 0
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "--to", "x", "--field", "full_name"],
        ["send", "--to", "x", "--field", "full_name=A", "--consent", "full_name:x"],
        ["send", "--consent", "full_name:x:investigation"],
        ["revoke", "r", "--field", "a", "--field", "b", "--recipient", "x"],
        ["grant", "r"],
    ],
)
def test_bad_input_exits_1_before_any_request(
    key_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--key-file", str(key_path), *argv]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_usage_errors_exit_1(key_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["--key-file", str(key_path), "no-such-command"])
    assert usage.value.code == 1
    assert main(["inbox"]) == 1
    assert "no key file" in capsys.readouterr().err
    assert main(["--key-file", str(key_path), "keygen", "--out", str(key_path)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_unreachable_server_exits_4(key_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--key-file", str(key_path), "--server", f"http://127.0.0.1:{free_port()}",
                 "inbox"]) == 4
    assert "cannot reach the server" in capsys.readouterr().err


def test_sealed_key_file_opens_with_the_passphrase_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sealed.json"
    monkeypatch.setenv("KEY_PASSPHRASE", "correct horse battery")
    sealed = ["--passphrase-env", "KEY_PASSPHRASE"]
    assert main([*sealed, "--json", "keygen", "--out", str(path), "--passphrase"]) == 0
    assert json.loads(capsys.readouterr().out)["sealed"] is True
    assert main(["--key-file", str(path), "configure", "--agency-id", "a", "--client-id", "c",
                 "--server", f"http://127.0.0.1:{free_port()}"]) == 0
    assert main(["--key-file", str(path), *sealed, "inbox"]) == 4  # opened, then no server
    monkeypatch.setenv("KEY_PASSPHRASE", "wrong")
    capsys.readouterr()
    assert main(["--key-file", str(path), *sealed, "inbox"]) == 1
    assert "wrong passphrase" in capsys.readouterr().err
