"""The server's own signing keys: access tokens and audit checkpoints.

Each is an Ed25519 seed stored base64url in a file (mode 0600). Generated into
the data directory on first start unless a file is configured; never logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings
from app.crypto import keys
from app.crypto.encoding import b64url_decode, b64url_encode


@dataclass(frozen=True)
class ServerKeys:
    token_seed: bytes
    token_public: bytes
    log_seed: bytes
    log_public: bytes

    @property
    def token_kid(self) -> str:
        return keys.kid(self.token_public)


def _load_or_create(path: Path) -> bytes:
    if path.exists():
        return b64url_decode(path.read_text().strip(), length=32)
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = keys.generate_signing_key().seed
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(b64url_encode(seed) + "\n")
    return seed


def load_server_keys(settings: Settings) -> ServerKeys:
    token_seed = _load_or_create(
        settings.keys.token_key_file or settings.data_dir / "token-signing.key"
    )
    log_seed = _load_or_create(settings.keys.log_key_file or settings.data_dir / "log-signing.key")
    return ServerKeys(
        token_seed=token_seed,
        token_public=keys.sig_public_from_seed(token_seed),
        log_seed=log_seed,
        log_public=keys.sig_public_from_seed(log_seed),
    )
