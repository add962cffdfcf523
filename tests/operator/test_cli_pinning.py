"""Pinning in the CLI, attacked with a real proxy in front of a live ``refgate-server``.

The proxy is what an operator (or anyone between the caseworker and the task
force's server) could run: an HTTP server that forwards every request to the
real gateway but serves its own log key and checkpoints signed with it. After
one honest run has pinned the log, every command through the proxy must be
refused before anything is sent, naming the pinned and the offered key.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.crypto import keys
from app.crypto.checkpoint import open_checkpoint, sign_checkpoint, verifier_key
from tests.client.test_cli import (
    REFGATE,
    SERVER,
    free_port,
    live,
    ok_all,
    onboard_members,
    run_all,
    wait_ready,
)

__all__ = ["live"]  # the live-server fixture, shared with the CLI tests

ORIGIN = "refgate.local/audit-log"


class ImposterProxy:
    """ASGI app forwarding to ``upstream``, serving its own log key and checkpoints.
    Records the method and path of every request it forwards."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.key = keys.generate_signing_key()
        self.vkey = verifier_key(ORIGIN, self.key.public)
        self.forwarded: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, query = scope["path"], scope["query_string"].decode()
        # the Host header is kept: to the gateway the proxy is the address the client used
        headers = {k.decode(): v.decode() for k, v in scope["headers"]
                   if k.lower() != b"content-length"}
        if path == "/v1/audit/log-key":
            status, ctype, out = 200, "text/plain", (self.vkey + "\n").encode()
        else:
            self.forwarded.append((scope["method"], path))
            async with httpx.AsyncClient(base_url=self.upstream) as upstream:
                r = await upstream.request(scope["method"], f"{path}?{query}", content=body,
                                           headers=headers)
                status, ctype, out = r.status_code, r.headers.get("content-type", ""), r.content
                if path == "/v1/audit/checkpoint" and status == 200:
                    key = (await upstream.get("/v1/audit/log-key", headers=headers)).text
                    real = open_checkpoint(out.decode(), key.strip())
                    out = sign_checkpoint(ORIGIN, real.size, real.root, self.key.seed,
                                          extensions=real.extensions).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode())]})
        await send({"type": "http.response.body", "body": out})


@pytest.fixture
def proxy(live: tuple[str, dict[str, str]]) -> Iterator[tuple[str, ImposterProxy]]:
    url, _ = live
    app = ImposterProxy(url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_cli_through_a_proxy_with_its_own_log_key_refuses_before_sending(
    live: tuple[str, dict[str, str]], proxy: tuple[str, ImposterProxy], tmp_path: Path
) -> None:
    url, env = live
    proxy_url, imposter = proxy
    wait_ready(url, tmp_path)
    ids = onboard_members(url, env, tmp_path)

    # the first honest use pins the log key (trust on first use, announced)
    [first] = ok_all([[REFGATE, "--key-file", "shelter.json", "agencies"]], env, tmp_path)
    assert "Compare it with the log key the task force published" in first.err
    pins = json.loads((tmp_path / "shelter.json.pins.json").read_text())
    assert pins["log_key"].startswith(ORIGIN + "+")
    assert pins["checkpoint"]["size"] > 0
    assert (tmp_path / "shelter.json.pins.json").stat().st_mode & 0o777 == 0o600

    legal = ids["legal"]
    send = [REFGATE, "--key-file", "shelter.json", "--server", proxy_url, "send", "--to", legal,
            "--field", "full_name=Maria Example",
            "--consent", f"full_name:{legal}:service_provision", "--service", "legal"]
    [refused] = run_all([send], env, tmp_path)
    assert refused.code == 3, refused.out + refused.err
    assert pins["log_key"] in refused.err
    assert imposter.vkey in refused.err
    assert "refgate configure --log-key" in refused.err
    assert not [p for m, p in imposter.forwarded if m == "POST" and p == "/v1/referrals"]
    assert not [p for _, p in imposter.forwarded if p.startswith("/v1/agencies")]
    # the pin did not move, and the honest server still works with it
    assert json.loads((tmp_path / "shelter.json.pins.json").read_text()) == pins
    [sent] = ok_all([[*send[:3], "--json", *send[5:]]], env, tmp_path)
    rid = json.loads(sent.out)["referral_id"]
    ok_all([[SERVER, "sequence"]], env, tmp_path)
    [report] = ok_all([[REFGATE, "--key-file", "shelter.json", "audit", "report", rid, "--csv"]],
                      env, tmp_path)
    lines = report.out.splitlines()
    assert lines[0].startswith("seq,ts,action,outcome,actor_agency")
    assert any(",referral:create,ok," in line and line.endswith(",ok") for line in lines)


def test_configure_pins_a_log_key_on_purpose(tmp_path: Path) -> None:
    """`refgate configure --log-key` pins without contacting anyone; a new key forgets
    the pinned checkpoint; a quorum larger than the witnesses given is refused."""
    key_file = tmp_path / "k.json"
    ok_all([[REFGATE, "--server", "http://127.0.0.1:9", "keygen", "--out", str(key_file)]],
           {}, tmp_path)
    log_key = verifier_key(ORIGIN, keys.generate_signing_key().public)
    witness = verifier_key("witness.example", keys.generate_signing_key().public)
    [done] = ok_all([[REFGATE, "--key-file", str(key_file), "--json", "configure",
                      "--log-key", log_key, "--witness", witness, "--quorum", "1"]], {}, tmp_path)
    pins = json.loads((tmp_path / "k.json.pins.json").read_text())
    assert pins == json.loads(done.out)
    assert (pins["log_key"], pins["witnesses"], pins["quorum"]) == (log_key, [witness], 1)
    [refused] = run_all([[REFGATE, "--key-file", str(key_file), "configure", "--log-key",
                          log_key, "--quorum", "2"]], {}, tmp_path)
    assert refused.code == 1
    assert "quorum of 2" in refused.err
