"""The agency key file: an agency's private keys and where to use them.

A key file is JSON, mode 0600, in one of two forms (``v`` is 1 in both)::

    {"v": 1, "server": url|null, "agency_id": id|null, "client_id": id|null,
     "role": role|null,
     "enc_private": b64url, "sig_seed": b64url, "auth_seed": b64url}

    {"v": 1, "server": …, "agency_id": …, "client_id": …, "role": …,
     "sealed": {"kdf": "argon2id", "opslimit": int, "memlimit": int,
                "salt": b64url, "box": b64url}}

``enc_private`` is the agency's X25519 private key, ``sig_seed`` its Ed25519
signing seed (manifests), ``auth_seed`` the API client's Ed25519 seed
(``private_key_jwt``). In the sealed form the box holds the JSON object of
those three values, encrypted under a passphrase (``app.crypto.passphrase``);
the routing members stay in the clear so that ``refgate configure`` can set
them without the passphrase. ``app.services.demo`` writes the plain form.

Rules: files are created with mode 0600 and never silently overwritten, and
:meth:`KeyFile.load` refuses a file that group or others may read (as ssh
does), because a readable key file is a leaked key.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.crypto import keys
from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode
from app.crypto.passphrase import (
    MEMLIMIT_MODERATE,
    OPSLIMIT_MODERATE,
    PassphraseError,
    open_with_passphrase,
    seal_with_passphrase,
)

__all__ = [
    "KeyFile",
    "KeyFileError",
    "PassphraseRequired",
    "PublicKeys",
    "is_sealed",
    "update_settings",
]

VERSION = 1
SETTINGS = ("server", "agency_id", "client_id", "role")
_PRIVATE = ("enc_private", "sig_seed", "auth_seed")


class KeyFileError(ValueError):
    """The key file is missing, unreadable, malformed, too open, or does not open."""


class PassphraseRequired(KeyFileError):
    """The key file is sealed and no passphrase was given."""


@dataclass(frozen=True)
class PublicKeys:
    """The base64url public keys an administrator registers for this key file."""

    enc_key: str
    sign_key: str
    auth_key: str


@dataclass(frozen=True)
class KeyFile:
    """An agency's private keys (raw 32-byte values) and its client settings."""

    enc_private: bytes = field(repr=False)
    sig_seed: bytes = field(repr=False)
    auth_seed: bytes = field(repr=False)
    server: str | None = None
    agency_id: str | None = None
    client_id: str | None = None
    role: str | None = None

    def __post_init__(self) -> None:
        for name in _PRIVATE:
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != keys.KEY_SIZE:
                raise KeyFileError(f"{name} must be {keys.KEY_SIZE} raw bytes")

    @classmethod
    def generate(cls, **settings: str | None) -> KeyFile:
        """Fresh X25519, Ed25519 (signing) and Ed25519 (client auth) keys from the OS CSPRNG."""
        agency = keys.generate_agency_keys()
        auth = keys.generate_signing_key()
        return cls(
            enc_private=agency.enc_private, sig_seed=agency.sig_seed, auth_seed=auth.seed,
            **settings,
        )

    @property
    def agency_keys(self) -> keys.AgencyKeys:
        return keys.AgencyKeys.from_private(self.enc_private, self.sig_seed)

    @property
    def enc_public(self) -> bytes:
        return keys.enc_public_from_private(self.enc_private)

    def public_keys(self) -> PublicKeys:
        """The encryption, signing and client-auth public keys, base64url."""
        return PublicKeys(
            enc_key=b64url_encode(self.enc_public),
            sign_key=b64url_encode(keys.sig_public_from_seed(self.sig_seed)),
            auth_key=b64url_encode(keys.sig_public_from_seed(self.auth_seed)),
        )

    def with_settings(self, **changes: str | None) -> KeyFile:
        unknown = set(changes) - set(SETTINGS)
        if unknown:
            raise KeyFileError(f"unknown key file settings {sorted(unknown)}")
        return replace(self, **changes)  # type: ignore[arg-type]

    # ------------------------------------------------------------ serialization

    def _private_json(self) -> dict[str, str]:
        return {name: b64url_encode(getattr(self, name)) for name in _PRIVATE}

    def to_json(
        self,
        passphrase: bytes | None = None,
        *,
        opslimit: int = OPSLIMIT_MODERATE,
        memlimit: int = MEMLIMIT_MODERATE,
    ) -> dict[str, Any]:
        """The file's JSON object; sealed when a passphrase is given (Argon2id: slow)."""
        data: dict[str, Any] = {"v": VERSION, **{s: getattr(self, s) for s in SETTINGS}}
        if passphrase is None:
            data.update(self._private_json())
        else:
            secret = json.dumps(self._private_json(), separators=(",", ":")).encode()
            try:
                data["sealed"] = seal_with_passphrase(
                    secret, passphrase, opslimit=opslimit, memlimit=memlimit
                )
            except PassphraseError as exc:
                raise KeyFileError(str(exc)) from None
        return data

    @classmethod
    def from_json(cls, data: object, passphrase: bytes | None = None) -> KeyFile:
        """Parse either form; a sealed one needs ``passphrase`` (Argon2id: slow)."""
        if not isinstance(data, Mapping) or data.get("v") != VERSION:
            raise KeyFileError(f"not a version {VERSION} refgate key file")
        settings: dict[str, str | None] = {}
        for name in SETTINGS:
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise KeyFileError(f"{name} must be a string or null")
            settings[name] = value
        if "sealed" in data:
            if passphrase is None:
                raise PassphraseRequired("the key file is sealed with a passphrase")
            try:
                private = json.loads(open_with_passphrase(data["sealed"], passphrase))
            except PassphraseError as exc:
                raise KeyFileError(f"cannot open the key file: {exc}") from None
            except ValueError:
                raise KeyFileError("the sealed key file does not hold JSON") from None
        else:
            private = data
        if not isinstance(private, Mapping):
            raise KeyFileError("the sealed key file does not hold a JSON object")
        raw: dict[str, bytes] = {}
        for name in _PRIVATE:
            try:
                raw[name] = b64url_decode(private.get(name), length=keys.KEY_SIZE)  # type: ignore[arg-type]
            except EncodingError:
                raise KeyFileError(f"{name} must be base64url of 32 bytes") from None
        return cls(
            enc_private=raw["enc_private"], sig_seed=raw["sig_seed"], auth_seed=raw["auth_seed"],
            server=settings["server"], agency_id=settings["agency_id"],
            client_id=settings["client_id"], role=settings["role"],
        )

    def save(
        self,
        path: Path,
        *,
        passphrase: bytes | None = None,
        overwrite: bool = False,
        opslimit: int = OPSLIMIT_MODERATE,
        memlimit: int = MEMLIMIT_MODERATE,
    ) -> None:
        """Write the file with mode 0600; refuses an existing file unless ``overwrite``."""
        _write_private(
            path, self.to_json(passphrase, opslimit=opslimit, memlimit=memlimit),
            overwrite=overwrite,
        )

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> KeyFile:
        """Read and parse a key file; raises :class:`PassphraseRequired` for a sealed one
        without passphrase and :class:`KeyFileError` for anything else that is wrong."""
        return cls.from_json(_read_private(path), passphrase)


def is_sealed(path: Path) -> bool:
    """Whether the key file at ``path`` is passphrase-sealed."""
    data = _read_private(path)
    return isinstance(data, Mapping) and "sealed" in data


def update_settings(path: Path, **changes: str | None) -> dict[str, str | None]:
    """Set routing members (``server``, ``agency_id``, ``client_id``, ``role``) in place.

    Works on sealed files without their passphrase (those members are not
    secret); the private part is copied unchanged. Returns the new settings.
    """
    unknown = set(changes) - set(SETTINGS)
    if unknown:
        raise KeyFileError(f"unknown key file settings {sorted(unknown)}")
    data = _read_private(path)
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise KeyFileError(f"{path} is not a version {VERSION} refgate key file")
    data.update(changes)
    _write_private(path, data, overwrite=True)
    return {s: data.get(s) for s in SETTINGS}


def _read_private(path: Path) -> Any:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        hint = " (make one with: refgate keygen --out FILE)" if exc.errno == errno.ENOENT else ""
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}{hint}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        try:
            data = json.loads(fh.read(1024 * 1024))
        except ValueError:
            data = None
    if not _looks_like_key_file(data):
        raise KeyFileError(
            f"{path} is not a refgate key file: pass the file `refgate keygen --out FILE` wrote "
            "(or the demo's .refgate/demo/*.key.json) with --key-file"
        )
    if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
        raise KeyFileError(
            f"key file {path} may be read by others (mode {stat.S_IMODE(mode):04o}); "
            "run: chmod 600 " + str(path)
        )
    return data


def _looks_like_key_file(data: Any) -> bool:
    """A JSON object with a version and private keys (plain or sealed)."""
    return isinstance(data, dict) and "v" in data and (
        "sealed" in data or "enc_private" in data
    )


def _write_private(path: Path, data: Mapping[str, Any], *, overwrite: bool) -> None:
    """Write JSON with mode 0600, atomically: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise KeyFileError(f"{path} exists; refusing to overwrite a key file")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the name exists, closing the race with a concurrent writer.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileError(f"{path} exists; refusing to overwrite a key file") from None
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
