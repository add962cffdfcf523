"""Safe retries: Ctrl-C on ``refgate send`` never loses or duplicates a referral.

A real proxy sits between the CLI and a live ``refgate-server``. It either
forwards ``POST /v1/referrals`` and then withholds the answer (the request
left and the referral exists, but the caseworker never hears so), or holds
the request without forwarding it (nothing reached the server). The CLI is
interrupted with SIGINT in each case, then the retry it printed is run: there
is exactly one referral, the outbox is empty, and no traceback was printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.client.outbox import outbox_path
from tests.client.test_cli import (
    REFGATE,
    free_port,
    live,
    ok_all,
    onboard_members,
    run_all,
    wait_ready,
)

__all__ = ["live"]


class HoldingProxy:
    """ASGI app forwarding to ``upstream``; ``POST /v1/referrals`` is held per ``mode``:
    ``"after"`` forwards it and withholds the answer, ``"before"`` never forwards it,
    ``"pass"`` forwards it as any other request."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.held = threading.Event()  # a POST /v1/referrals is being held
        self.release = threading.Event()
        self.forwarded_posts = 0

    async def _hold(self) -> None:
        self.held.set()
        await asyncio.to_thread(self.release.wait, 120)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, query = scope["path"], scope["query_string"].decode()
        headers = {k.decode(): v.decode() for k, v in scope["headers"]
                   if k.lower() != b"content-length"}
        is_send = scope["method"] == "POST" and path == "/v1/referrals"
        if is_send and self.mode == "before":
            await self._hold()
            status, ctype, out = 502, "text/plain", b"held"
        else:
            async with httpx.AsyncClient(base_url=self.upstream) as upstream:
                r = await upstream.request(scope["method"], f"{path}?{query}", content=body,
                                           headers=headers)
            status, ctype, out = r.status_code, r.headers.get("content-type", ""), r.content
            if is_send:
                self.forwarded_posts += 1
                if self.mode == "after":
                    await self._hold()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode())]})
        await send({"type": "http.response.body", "body": out})


@pytest.fixture
def proxy(live: tuple[str, dict[str, str]]) -> Iterator[tuple[str, HoldingProxy]]:
    url, _ = live
    app = HoldingProxy(url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        app.release.set()
        server.should_exit = True
        thread.join(timeout=10)


def _onboard(proxy_url: str, env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    ids = onboard_members(proxy_url, env, tmp_path)
    # pin the log once (trust on first use) so the interrupted run does nothing else first
    ok_all([[REFGATE, "--key-file", "shelter.json", "agencies"]], env, tmp_path)
    return ids


def _interrupted_send(
    legal: str, env: dict[str, str], tmp_path: Path, app: HoldingProxy
) -> tuple[int, str, str]:
    proc = subprocess.Popen(
        [REFGATE, "--key-file", "shelter.json", "send", "--to", legal,
         "--field", "full_name=Maria Example", "--consent", f"full_name:{legal}:service_provision",
         "--service", "legal"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert app.held.wait(60), proc.communicate(timeout=10)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def _sent_ids(env: dict[str, str], tmp_path: Path) -> list[str]:
    [r] = ok_all([[REFGATE, "--key-file", "shelter.json", "--json", "inbox", "--sent"]],
                 env, tmp_path)
    return [item["referral_id"] for item in json.loads(r.out)["items"]]


@pytest.mark.parametrize("mode", ["after", "before"])
def test_sigint_during_send_then_the_printed_retry_makes_exactly_one_referral(
    live: tuple[str, dict[str, str]], proxy: tuple[str, HoldingProxy], tmp_path: Path, mode: str
) -> None:
    url, env = live
    proxy_url, app = proxy
    wait_ready(url, tmp_path)
    ids = _onboard(proxy_url, env, tmp_path)

    app.mode = mode
    code, out, err = _interrupted_send(ids["legal"], env, tmp_path, app)
    assert code == 130, out + err
    assert "Traceback" not in err
    assert "interrupted" in err
    retry = re.search(r"refgate send --retry ([0-9a-f-]{36})", err)
    assert retry is not None, err
    rid = retry.group(1)
    # the id was printed before anything was sent, and the envelope waits in a 0600 outbox
    assert err.index(rid) < err.index("interrupted")
    saved = outbox_path(tmp_path / "shelter.json") / f"{rid}.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert saved.parent.stat().st_mode & 0o777 == 0o700
    assert _sent_ids(env, tmp_path) == ([rid] if mode == "after" else [])
    assert app.forwarded_posts == (1 if mode == "after" else 0)

    app.release.set()
    app.mode = "pass"
    [again] = ok_all([[REFGATE, "--key-file", "shelter.json", "send", "--retry", rid]],
                     env, tmp_path)
    assert f"sent referral {rid} to 1 agency\n" in again.out
    assert "full_name" in again.out
    assert _sent_ids(env, tmp_path) == [rid]
    assert not saved.exists()

    # once acknowledged it is gone from the outbox: a second retry says so, sends nothing
    [late] = run_all([[REFGATE, "--key-file", "shelter.json", "send", "--retry", rid]],
                     env, tmp_path)
    assert late.code == 1
    assert f"no unsent referral {rid}" in late.err
    assert "refgate inbox --sent" in late.err
    assert _sent_ids(env, tmp_path) == [rid]


@pytest.mark.parametrize("loaded", ["_pydantic_core", "_sodium", "_cffi_backend"])
def test_sigint_while_the_cli_imports_prints_no_traceback(tmp_path: Path, loaded: str) -> None:
    """Ctrl-C while the client's libraries load (the first third of a second the issue
    describes) exits 130 quietly. The signal is sent the moment the process has mapped
    ``loaded`` (a compiled module the client imports after refgate's entry module ran),
    so the test does not depend on the machine's speed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFGATE_")}
    proc = subprocess.Popen([REFGATE, "--key-file", str(tmp_path / "k.json"), "agencies"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if loaded in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert err == "interrupted\n"


def test_retry_refuses_other_send_flags_and_bad_ids(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFGATE_")}
    ok_all([[REFGATE, "--server", "http://127.0.0.1:9", "keygen", "--out", "k.json"]],
           env, tmp_path)
    mixed, bad = run_all([
        [REFGATE, "--key-file", "k.json", "send", "--retry",
         "00000000-0000-4000-8000-000000000000", "--to", "x"],
        [REFGATE, "--key-file", "k.json", "send", "--retry", "../k"],
    ], env, tmp_path)
    assert mixed.code == 1
    assert "--retry re-sends the saved envelope as it is" in mixed.err
    assert bad.code == 1
    assert "is not a referral id" in bad.err
