"""The README walkthrough's directory steps with the real CLI against a live demo server.

``refgate-server serve --demo`` seeds the demo task force and its services; the
shelter's caseworker finds legal aid and the police unit by service, sends to
them by name, and posts a bed fewer; an ambiguous or unknown name is refused
with a message that points to ``refgate find``. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client.cli import main
from app.client.directory_cli import age
from tests.client.test_cli import REFGATE, SERVER, ok_all, run_all
from tests.demo_server import demo_server


@pytest.fixture
def demo(database_url: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    with demo_server(tmp_path, database_url=database_url, clean_env=True) as server:
        yield server.env, server.keys


def test_find_then_send_by_name_then_post_capacity(
    demo: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, keys = demo

    def cli(member: str, *args: str) -> list[str]:
        return [REFGATE, "--key-file", str(keys / f"{member}.key.json"), *args]

    legal, police, beds, nothing = ok_all([
        cli("shelter", "find", "--service", "immigration_legal", "--language", "es"),
        cli("shelter", "find", "--service", "investigation"),
        cli("shelter", "find", "--service", "shelter", "--language", "es", "--population",
            "women", "--accepting"),
        cli("shelter", "find", "--service", "shelter", "--language", "fa"),
    ], env, tmp_path)
    header = legal.out.splitlines()[0].split()
    assert header == ["AGENCY", "SERVICE", "ACCEPTING", "CAPACITY", "UPDATED", "LANGUAGES"]
    assert "Eastside Legal Aid Clinic" in legal.out
    assert "4 appointments" in legal.out
    assert "just now" in legal.out
    assert "en,es,fa" in legal.out
    assert "County Human Trafficking Unit" in police.out
    assert "Harbor House" not in police.out
    [row] = [line for line in beds.out.splitlines() if "Harbor House Shelter" in line]
    assert "Emergency beds for women" in row
    assert "2 beds" in row
    assert "Family rooms" not in beds.out  # waitlist: not accepting
    assert "no service matches" in nothing.out

    [sent] = ok_all([cli(
        "shelter", "--json", "send", "--to", "Eastside Legal", "--to", "county human",
        "--field", "full_name=Maria Example", "--field", "narrative=Recruited.",
        "--consent", "full_name:Eastside Legal:service_provision",
        "--consent", "full_name:county human:investigation",
        "--consent", "narrative:Eastside Legal:service_provision",
        "--urgency", "urgent", "--service", "legal",
    )], env, tmp_path)
    referral = sent.json()
    assert isinstance(referral, dict)
    rid = referral["referral_id"]
    legal_inbox, police_inbox, services = ok_all([
        cli("legal-aid", "inbox"), cli("police", "inbox"), cli("shelter", "--json", "services"),
    ], env, tmp_path)
    assert rid in legal_inbox.out
    assert rid in police_inbox.out
    own = services.json()
    assert isinstance(own, list)
    emergency = next(s for s in own if s["name"] == "Emergency beds for women")
    [posted] = ok_all([cli("shelter", "capacity", emergency["id"], "--available", "1")], env,
                      tmp_path)
    assert "yes, 1 bed" in posted.out
    assert "1 beds" not in posted.out
    [after] = ok_all([cli("legal-aid", "find", "--service", "shelter", "--accepting")], env,
                     tmp_path)
    assert "1 bed" in after.out

    # a name that is not unique, one that matches nothing, another agency's service
    keygen = ok_all([[REFGATE, "--json", "--server", "http://x", "keygen", "--out", "y.json"]],
                    env, tmp_path)[0].json()
    assert isinstance(keygen, dict)
    ok_all([[SERVER, "create-agency", "--name", "Eastside Youth Center", "--kind", "ngo",
             f"--enc-key={keygen['enc_key']}", f"--sign-key={keygen['sign_key']}"]], env, tmp_path)
    ambiguous, unknown, foreign = run_all([
        cli("shelter", "send", "--to", "eastside", "--field", "full_name=A",
            "--consent", "full_name:eastside:service_provision", "--service", "legal"),
        cli("shelter", "send", "--to", "Westside", "--field", "full_name=A",
            "--consent", "full_name:Westside:service_provision", "--service", "legal"),
        cli("legal-aid", "capacity", emergency["id"], "--available", "9"),
    ], env, tmp_path)
    assert ambiguous.code == 1
    assert "could be any of 2 agencies" in ambiguous.err
    assert "refgate find" in ambiguous.err
    assert unknown.code == 1
    assert "no agency is called 'Westside'" in unknown.err
    assert "refgate find" in unknown.err
    assert foreign.code == 2
    assert "404" in foreign.err


def test_capacity_needs_something_to_post(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REFGATE_KEY_FILE", raising=False)
    path = tmp_path / "k.json"
    assert main(["--server", "http://127.0.0.1:9", "keygen", "--out", str(path)]) == 0
    assert main(["--key-file", str(path), "configure", "--agency-id", "a", "--client-id", "c"]) == 0
    capsys.readouterr()
    assert main(["--key-file", str(path), "capacity", "s-1"]) == 1
    assert "say what changed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["--key-file", str(path), "find", "--language", "en_US"])
    assert usage.value.code == 1
    assert "BCP 47" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--key-file", str(path), "find", "--service", "spa"])


def test_age_reads_like_a_caseworker_would_say_it() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)
    assert age("2026-12-07T22:59:30Z", now) == "just now"
    assert age("2026-12-07T22:45:00Z", now) == "15 min ago"
    assert age("2026-12-07T20:00:00Z", now) == "3 h ago"
    assert age("2026-12-05T23:00:00Z", now) == "2 d ago"
