"""Agency and client keys: X25519 for encryption, Ed25519 for signatures.

Keys cross this module's boundary as raw 32-byte strings (private X25519
scalars, Ed25519 seeds, public keys), never as library objects, so the rest of
the code base does not depend on PyNaCl. Every function checks key lengths and
raises :class:`InvalidKeyError` with a clear message instead of letting a short
or long key reach libsodium.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.public
import nacl.signing

from app.crypto.encoding import b64url_encode

__all__ = [
    "KEY_SIZE",
    "SEALED_BOX_OVERHEAD",
    "SIGNATURE_SIZE",
    "AgencyKeys",
    "CryptoError",
    "DecryptionError",
    "InvalidKeyError",
    "SigningKeys",
    "enc_public_from_private",
    "generate_agency_keys",
    "generate_signing_key",
    "kid",
    "seal",
    "sig_public_from_seed",
    "sign",
    "unseal",
    "verify",
]

KEY_SIZE = 32
"""Length of every raw key handled here (X25519 private/public, Ed25519 seed/public)."""

SIGNATURE_SIZE = 64
"""Length of an Ed25519 signature."""

SEALED_BOX_OVERHEAD = 48
"""crypto_box_seal adds a 32-byte ephemeral public key and a 16-byte tag."""


class CryptoError(ValueError):
    """Base class of the errors raised by this module."""


class InvalidKeyError(CryptoError):
    """A key is not 32 raw bytes, or libsodium refuses it (e.g. a low-order point)."""


class DecryptionError(CryptoError):
    """A sealed box could not be opened: wrong key, or the data was altered."""


def _raw_key(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidKeyError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) != KEY_SIZE:
        raise InvalidKeyError(f"{what} must be {KEY_SIZE} bytes, got {len(value)}")
    return value


def kid(public_key: bytes) -> str:
    """Key id of a raw public key: base64url (no padding) of SHA-256(key)[:16].

    Guarantees a 22-character string; refuses anything but a 32-byte key.
    """
    return b64url_encode(hashlib.sha256(_raw_key(public_key, "public key")).digest()[:16])


@dataclass(frozen=True)
class SigningKeys:
    """An Ed25519 key pair as raw bytes. The seed is kept out of ``repr``."""

    seed: bytes = field(repr=False)
    public: bytes

    @property
    def kid(self) -> str:
        """Key id of the public key."""
        return kid(self.public)


@dataclass(frozen=True)
class AgencyKeys:
    """An agency's two key pairs as raw bytes. Private parts are kept out of ``repr``."""

    enc_private: bytes = field(repr=False)
    enc_public: bytes
    sig_seed: bytes = field(repr=False)
    sig_public: bytes

    @classmethod
    def from_private(cls, enc_private: bytes, sig_seed: bytes) -> AgencyKeys:
        """Rebuild an agency's key set from its two private values."""
        return cls(
            enc_private=_raw_key(enc_private, "X25519 private key"),
            enc_public=enc_public_from_private(enc_private),
            sig_seed=_raw_key(sig_seed, "Ed25519 seed"),
            sig_public=sig_public_from_seed(sig_seed),
        )

    @property
    def enc_kid(self) -> str:
        """Key id of the X25519 public key."""
        return kid(self.enc_public)

    @property
    def sig_kid(self) -> str:
        """Key id of the Ed25519 public key."""
        return kid(self.sig_public)


def generate_signing_key() -> SigningKeys:
    """Generate a fresh Ed25519 key pair from the OS CSPRNG."""
    key = nacl.signing.SigningKey.generate()
    return SigningKeys(seed=bytes(key), public=bytes(key.verify_key))


def generate_agency_keys() -> AgencyKeys:
    """Generate a fresh X25519 and a fresh Ed25519 key pair from the OS CSPRNG."""
    enc = nacl.public.PrivateKey.generate()
    sig = generate_signing_key()
    return AgencyKeys(
        enc_private=bytes(enc),
        enc_public=bytes(enc.public_key),
        sig_seed=sig.seed,
        sig_public=sig.public,
    )


def enc_public_from_private(private_key: bytes) -> bytes:
    """X25519 public key of a raw private key."""
    return bytes(nacl.public.PrivateKey(_raw_key(private_key, "X25519 private key")).public_key)


def sig_public_from_seed(seed: bytes) -> bytes:
    """Ed25519 public key of a raw 32-byte seed."""
    return bytes(nacl.signing.SigningKey(_raw_key(seed, "Ed25519 seed")).verify_key)


def sign(seed: bytes, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes, deterministic per RFC 8032) of ``message``."""
    key = nacl.signing.SigningKey(_raw_key(seed, "Ed25519 seed"))
    return key.sign(message).signature


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``message``.

    A signature of the wrong length or type is simply invalid (False); only a
    malformed public key raises :class:`InvalidKeyError`, because that is the
    caller's mistake rather than the signer's.
    """
    key = nacl.signing.VerifyKey(_raw_key(public_key, "Ed25519 public key"))
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        key.verify(message, signature)
    except nacl.exceptions.CryptoError:
        return False
    return True


def seal(public_key: bytes, data: bytes) -> bytes:
    """Anonymous sealed box (libsodium crypto_box_seal) of ``data`` to an X25519 key.

    The output is ``len(data) + 48`` bytes and randomized: sealing twice gives
    different bytes. Only the holder of the matching private key can open it.
    """
    box = nacl.public.SealedBox(nacl.public.PublicKey(_raw_key(public_key, "X25519 public key")))
    try:
        return box.encrypt(data)
    except nacl.exceptions.CryptoError as exc:
        raise InvalidKeyError("X25519 public key refused (low-order point)") from exc


def unseal(private_key: bytes, data: bytes) -> bytes:
    """Open a sealed box with a raw X25519 private key (the public key is derived).

    Raises :class:`DecryptionError` if the box was not sealed to this key or
    was altered in any way; never returns unauthenticated bytes.
    """
    box = nacl.public.SealedBox(nacl.public.PrivateKey(_raw_key(private_key, "X25519 private key")))
    try:
        return box.decrypt(data)
    except nacl.exceptions.CryptoError as exc:
        raise DecryptionError("sealed box could not be opened") from exc
