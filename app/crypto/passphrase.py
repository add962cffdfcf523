"""Passphrase sealing of small secrets (the agency key file): Argon2id + SecretBox.

``seal_with_passphrase`` derives a 32-byte key with Argon2id (libsodium
``crypto_pwhash``, random 16-byte salt) and encrypts the data with
``crypto_secretbox`` (XSalsa20-Poly1305, random 24-byte nonce). The result is
a JSON-ready object::

    {"kdf": "argon2id", "opslimit": int, "memlimit": int,
     "salt": base64url, "box": base64url(nonce || ciphertext)}

Guarantees of ``open_with_passphrase``: it returns the sealed bytes only if
the passphrase is the one they were sealed with and nothing in the object was
altered (the box is authenticated; a changed salt or limit derives another
key and fails the same way). Cost parameters read from the object are bounded
to [interactive, sensitive], so a crafted file can neither weaken the KDF
below the interactive profile nor make the reader allocate more than 1 GiB.
Every refusal is a :class:`PassphraseError`. Argon2id at the moderate profile
takes about half a second and 256 MiB: async callers run it in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret

from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode

__all__ = [
    "KDF",
    "MEMLIMIT_INTERACTIVE",
    "MEMLIMIT_MODERATE",
    "OPSLIMIT_INTERACTIVE",
    "OPSLIMIT_MODERATE",
    "PassphraseError",
    "open_with_passphrase",
    "seal_with_passphrase",
]

KDF = "argon2id"
OPSLIMIT_INTERACTIVE: int = argon2id.OPSLIMIT_INTERACTIVE
MEMLIMIT_INTERACTIVE: int = argon2id.MEMLIMIT_INTERACTIVE
OPSLIMIT_MODERATE: int = argon2id.OPSLIMIT_MODERATE
MEMLIMIT_MODERATE: int = argon2id.MEMLIMIT_MODERATE
_OPSLIMIT_BOUNDS = (argon2id.OPSLIMIT_INTERACTIVE, argon2id.OPSLIMIT_SENSITIVE)
_MEMLIMIT_BOUNDS = (argon2id.MEMLIMIT_INTERACTIVE, argon2id.MEMLIMIT_SENSITIVE)
_SALT_SIZE: int = argon2id.SALTBYTES
_MEMBERS = frozenset({"kdf", "opslimit", "memlimit", "salt", "box"})


class PassphraseError(ValueError):
    """Wrong passphrase, altered or malformed sealed object, or unacceptable parameters."""


def _limit(value: object, bounds: tuple[int, int], what: str) -> int:
    if type(value) is not int or not bounds[0] <= value <= bounds[1]:
        raise PassphraseError(f"{what} must be an integer in [{bounds[0]}, {bounds[1]}]")
    return value


def _passphrase(value: object) -> bytes:
    if not isinstance(value, bytes) or not value:
        raise PassphraseError("the passphrase must be non-empty bytes")
    return value


def _derive(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    key: bytes = argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit
    )
    return key


def seal_with_passphrase(
    data: bytes,
    passphrase: bytes,
    *,
    opslimit: int = OPSLIMIT_MODERATE,
    memlimit: int = MEMLIMIT_MODERATE,
) -> dict[str, Any]:
    """Encrypt ``data`` under a key derived from ``passphrase``; see the module docstring.

    Defaults to libsodium's moderate profile; tests may pass the interactive
    limits. Limits outside [interactive, sensitive] or an empty passphrase
    raise :class:`PassphraseError`.
    """
    passphrase = _passphrase(passphrase)
    opslimit = _limit(opslimit, _OPSLIMIT_BOUNDS, "opslimit")
    memlimit = _limit(memlimit, _MEMLIMIT_BOUNDS, "memlimit")
    salt = os.urandom(_SALT_SIZE)
    box = nacl.secret.SecretBox(_derive(passphrase, salt, opslimit, memlimit))
    return {
        "kdf": KDF,
        "opslimit": opslimit,
        "memlimit": memlimit,
        "salt": b64url_encode(salt),
        "box": b64url_encode(bytes(box.encrypt(data))),
    }


def open_with_passphrase(sealed: Mapping[str, Any], passphrase: bytes) -> bytes:
    """Decrypt an object made by :func:`seal_with_passphrase`, or raise :class:`PassphraseError`."""
    passphrase = _passphrase(passphrase)
    if not isinstance(sealed, Mapping) or set(sealed) != _MEMBERS:
        raise PassphraseError(f"a sealed object has exactly the members {sorted(_MEMBERS)}")
    if sealed["kdf"] != KDF:
        raise PassphraseError(f"unsupported kdf {sealed['kdf']!r}; only {KDF!r} is known")
    opslimit = _limit(sealed["opslimit"], _OPSLIMIT_BOUNDS, "opslimit")
    memlimit = _limit(sealed["memlimit"], _MEMLIMIT_BOUNDS, "memlimit")
    try:
        salt = b64url_decode(sealed["salt"], length=_SALT_SIZE)
        blob = b64url_decode(sealed["box"])
    except EncodingError as exc:
        raise PassphraseError(f"salt or box is not valid base64url: {exc}") from None
    box = nacl.secret.SecretBox(_derive(passphrase, salt, opslimit, memlimit))
    try:
        return bytes(box.decrypt(blob))
    except nacl.exceptions.CryptoError:
        raise PassphraseError("wrong passphrase, or the sealed data was altered") from None
