"""``refgate-server witness``: key file, printed key, and the real process serving."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.crypto import keys
from app.crypto.cosignature import parse_witness_vkey, verify_cosignatures, witness_vkey
from app.crypto.encoding import b64url_decode
from app.server_cli import main
from tests.witness.testlog import TestLog

NAME = "partner.example.net/witness"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_print_key_creates_a_private_key_file_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "w" / "witness.key"
    args = ["witness", "--name", NAME, "--key-file", str(key_file), "--print-key"]
    assert main(args) == 0
    first = capsys.readouterr().out.strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    seed = b64url_decode(key_file.read_text().strip(), length=32)
    assert first == witness_vkey(NAME, keys.sig_public_from_seed(seed))
    assert parse_witness_vkey(first).name == NAME
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == first


def test_witness_refuses_to_start_without_a_valid_log_key(tmp_path: Path) -> None:
    key_file = str(tmp_path / "witness.key")
    with pytest.raises(SystemExit, match="at least one --log"):
        main(["witness", "--name", NAME, "--key-file", key_file])
    with pytest.raises(SystemExit, match="not a log verifier key"):
        main(["witness", "--name", NAME, "--key-file", key_file, "--log", "nonsense"])
    with pytest.raises(SystemExit, match="invalid witness name"):
        main(["witness", "--name", "has space", "--key-file", key_file, "--print-key"])


async def test_the_witness_process_prints_its_key_and_cosigns(
    tmp_path: Path, witness_db_url: str
) -> None:
    log = TestLog()
    port = _free_port()
    key_file = tmp_path / "w" / "witness.key"
    out = (tmp_path / "witness.out").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.server_cli", "witness", "--name", NAME,
        "--key-file", str(key_file), "--log", log.vkey, "--port", str(port),
        "--database", witness_db_url,
        stdout=out, stderr=out, env={**os.environ}, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        printed = ""
        while "witness serving" not in printed:
            assert proc.returncode is None, (tmp_path / "witness.out").read_text()
            assert time.monotonic() < deadline, printed
            await asyncio.sleep(0.1)
            printed = (tmp_path / "witness.out").read_text()
        vkey = printed.split("verifier key: ", 1)[1].split()[0]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(50):
                try:
                    assert (await http.get("/")).text.strip() == vkey
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            r = await http.post("/add-checkpoint", content=log.submission(0, 9))
            assert r.status_code == 200, r.text
            assert verify_cosignatures(log.note(9) + r.text, [vkey], 1) == [NAME]
            r = await http.post("/add-checkpoint", content=log.submission(0, 12))
            assert r.status_code == 409
            assert r.headers["content-type"] == "text/x.tlog.size"
            assert r.text == "9\n"
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        out.close()
