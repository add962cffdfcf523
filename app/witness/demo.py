"""The local witness ``./dev serve`` runs beside the demo gateway.

A separate process (``refgate-server witness``) with its key and state in
``<data dir>/witness/``, trusting the demo log's key, on the gateway's port
+ 100; the gateway is pointed at it through ``REFGATE_AUDIT__WITNESSES``, so
the walkthrough shows cosigned checkpoints. A real deployment runs its
witnesses elsewhere, ideally at other organizations (deploy/RUNBOOK.md).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from app.config import Settings
from app.crypto import keys
from app.crypto.checkpoint import verifier_key
from app.crypto.cosignature import witness_vkey
from app.services.server_keys import load_or_create_key_file, load_server_keys

NAME = "witness.demo.refgate.local/w1"
PORT_OFFSET = 100


@dataclass
class LocalWitness:
    process: subprocess.Popen[bytes]
    url: str
    vkey: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """In the witness child, before exec: on Linux, have the kernel send it SIGTERM when
    the gateway that started it dies, however it dies (a SIGKILL skips ``stop()``), so a
    killed ``serve --demo`` leaves no witness holding its port."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start(settings: Settings, gateway_port: int) -> LocalWitness:
    """Start the demo witness and export ``REFGATE_AUDIT__WITNESSES`` for the gateway."""
    directory = settings.data_dir / "witness"
    key_file = directory / "witness.key"
    seed = load_or_create_key_file(key_file)
    vkey = witness_vkey(NAME, keys.sig_public_from_seed(seed))
    log_key = verifier_key(settings.audit.log_origin, load_server_keys(settings).log_public)
    port = gateway_port + PORT_OFFSET
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and module, fixed arguments)
        [
            sys.executable, "-m", "app.server_cli", "witness", "--name", NAME,
            "--key-file", str(key_file), "--log", log_key,
            "--host", "127.0.0.1", "--port", str(port),
        ],
        # preexec_fn runs Python in the forked child: safe here because the gateway starts
        # the witness before it starts any thread (the seeding and uvicorn come after)
        preexec_fn=_die_with_parent,  # noqa: PLW1509
    )
    os.environ["REFGATE_AUDIT__WITNESSES"] = json.dumps([{"url": url, "vkey": vkey}])
    return LocalWitness(process=process, url=url, vkey=vkey)
