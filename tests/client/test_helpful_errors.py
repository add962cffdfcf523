"""Errors say what happened and what to do (issue 18): each message checked by its new text."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import httpx
import pytest

from app.client.cli import EXIT_NETWORK, main, parser
from app.client.help_topics import ROLE_SCOPES as CLIENT_ROLE_SCOPES
from app.client.keyfile import KeyFile
from app.client.sdk import RefgateClient, RefgateError, ServerUnreachable
from app.identity import ROLE_SCOPES
from tests.client.test_cli import free_port
from tests.client.test_sdk import REQUEST, MakeSdk, key_file, sdk
from tests.taskforce import TaskForce

__all__ = ["sdk"]


async def test_no_such_agency_names_the_id_and_how_to_find_the_right_one(
    client: httpx.AsyncClient, tf: TaskForce, sdk: MakeSdk
) -> None:
    missing = str(uuid.uuid4())
    r = await client.get(f"/v1/agencies/{missing}", headers=await tf.headers("shelter"))
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert f"no such agency: {missing!r}" in detail
    assert "refgate find" in detail
    assert "refgate agencies" in detail
    with pytest.raises(RefgateError) as caught:
        await sdk("shelter").agency(missing)
    assert missing in caught.value.detail


async def test_an_unreachable_server_is_named_with_what_to_check(tf: TaskForce) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    rc = RefgateClient(key_file(tf, "shelter"), base_url=url)
    async with rc:
        with pytest.raises(ServerUnreachable) as caught:
            await rc.limits()
    message = str(caught.value)
    assert f"cannot reach the server at {url}" in message
    assert "--server" in message
    assert "./dev serve" in message
    assert isinstance(caught.value, httpx.TransportError)  # old `except` clauses still work


def test_the_cli_names_the_unreachable_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REFGATE_KEY_FILE", raising=False)
    path = tmp_path / "k.json"
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--server", url, "keygen", "--out", str(path)]) == 0
    assert main(["--key-file", str(path), "configure", "--agency-id", "a", "--client-id", "c"]) == 0
    capsys.readouterr()
    assert main(["--key-file", str(path), "inbox"]) == EXIT_NETWORK
    err = capsys.readouterr().err
    assert f"error: cannot reach the server at {url}" in err
    assert "./dev serve" in err
    assert "Traceback" not in err


def test_no_server_url_names_the_cli_flag(tf: TaskForce) -> None:
    kf = key_file(tf, "shelter")
    bare = KeyFile(enc_private=kf.enc_private, sig_seed=kf.sig_seed, auth_seed=kf.auth_seed,
                   agency_id=kf.agency_id, client_id=kf.client_id, role=kf.role)
    with pytest.raises(ValueError, match="no server URL") as caught:
        RefgateClient(bare)
    assert "the CLI flag is --server URL" in str(caught.value)
    assert "refgate configure --server URL" in str(caught.value)


async def test_a_consent_lifetime_out_of_range_names_the_flag(
    tf: TaskForce, sdk: MakeSdk
) -> None:
    await tf.sequence()
    legal = tf["legal"].agency_id
    with pytest.raises(ValueError, match=r"refgate send --days") as caught:
        await sdk("shelter").seal_referral(
            {"full_name": "Maria"}, {"full_name": {legal: "service_provision"}},
            {legal: REQUEST}, expires_in_days=0,
        )
    assert "consent must last 1 to" in str(caught.value)


def test_exit_codes_are_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = parser().format_help()
    for line in ("  0    done", "  1    usage or input error", "  2    the server refused",
                 "  3    verification failed", "  4    network error or server failure",
                 "  130  interrupted"):
        assert line in text
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "| 130 |" in readme


def test_refgate_roles_explains_the_four_roles_as_the_server_grants_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert {str(r): tuple(str(s) for s in scopes) for r, scopes in ROLE_SCOPES.items()} == (
        CLIENT_ROLE_SCOPES
    )
    assert main(["roles"]) == 0
    out = capsys.readouterr().out
    for role in ("caseworker", "liaison", "auditor", "admin"):
        assert f"\n{role}\n  " in out
    assert "It cannot send referrals." in out



def test_every_option_of_every_command_has_a_description() -> None:
    missing: list[str] = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {action.option_strings or action.dest}")

    walk(parser(), "refgate")
    assert missing == []
