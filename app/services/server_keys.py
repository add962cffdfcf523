"""The server's own keys: access tokens, audit checkpoints, webhook secrets at rest.

Each is 32 random bytes stored base64url in a file (mode 0600): an Ed25519 seed
for the two signing keys, an XChaCha20-Poly1305 key for the one that seals
webhook signing secrets in the database (``app.services.webhooks``). Generated
into the data directory on first start unless a file is configured; never
logged.
"""

from __future__ import annotations

import functools
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
    previous_token_public: bytes | None = None  # verify-only, during a rotation

    @property
    def token_kid(self) -> str:
        return keys.kid(self.token_public)

    @property
    def token_verify_keys(self) -> list[bytes]:
        """The public keys access tokens may be signed with: current, then previous."""
        return [k for k in (self.token_public, self.previous_token_public) if k is not None]


def _load_or_create(path: Path) -> bytes:
    """Read a key file, or create it (0600, in a 0700 directory) exactly once.

    Two workers starting together race on O_EXCL: the loser reads the winner's key.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        seed = keys.generate_signing_key().seed
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(b64url_encode(seed) + "\n")
        try:
            os.link(tmp, path)  # atomic: fails if another worker won
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return b64url_decode(path.read_text().strip(), length=32)


load_or_create_key_file = _load_or_create
"""Public name for other key holders (the witness's key file has the same format)."""


@functools.cache
def _key_at(path: Path) -> bytes:
    return _load_or_create(path)


def webhook_secret_key(settings: Settings) -> bytes:
    """The key that seals webhook signing secrets at rest (read once per process)."""
    return _key_at(settings.keys.webhook_key_file or settings.data_dir / "webhook-secrets.key")


def load_server_keys(settings: Settings) -> ServerKeys:
    token_seed = _load_or_create(
        settings.keys.token_key_file or settings.data_dir / "token-signing.key"
    )
    log_seed = _load_or_create(settings.keys.log_key_file or settings.data_dir / "log-signing.key")
    webhook_secret_key(settings)  # created here too: before workers start, not on first use
    previous = settings.keys.previous_token_key_file
    previous_seed = b64url_decode(previous.read_text().strip(), length=32) if previous else None
    return ServerKeys(
        token_seed=token_seed,
        token_public=keys.sig_public_from_seed(token_seed),
        log_seed=log_seed,
        log_public=keys.sig_public_from_seed(log_seed),
        previous_token_public=keys.sig_public_from_seed(previous_seed) if previous_seed else None,
    )
