/**
 * Agency and client keys as raw 32-byte values (X25519 private scalars,
 * Ed25519 seeds, public keys), like app/crypto/keys.py: sealed boxes,
 * Ed25519 signatures and the key id, all through libsodium.
 */
import { lib } from "./sodium";
import { b64urlEncode } from "./encoding";

export const KEY_SIZE = 32;
export const SIGNATURE_SIZE = 64;

export class InvalidKeyError extends Error {
  override name = "InvalidKeyError";
}

export class DecryptionError extends Error {
  override name = "DecryptionError";
}

function rawKey(value: Uint8Array, what: string): Uint8Array {
  if (!(value instanceof Uint8Array) || value.length !== KEY_SIZE) {
    throw new InvalidKeyError(`${what} must be ${KEY_SIZE} bytes`);
  }
  return value;
}

export function sha256(data: Uint8Array): Uint8Array {
  return lib().crypto_hash_sha256(data);
}

/** Key id: base64url (no padding) of SHA-256(raw public key)[:16]. */
export function kid(publicKey: Uint8Array): string {
  return b64urlEncode(sha256(rawKey(publicKey, "public key")).slice(0, 16));
}

export function encPublicFromPrivate(privateKey: Uint8Array): Uint8Array {
  return lib().crypto_scalarmult_base(rawKey(privateKey, "X25519 private key"));
}

export function sigPublicFromSeed(seed: Uint8Array): Uint8Array {
  return lib().crypto_sign_seed_keypair(rawKey(seed, "Ed25519 seed")).publicKey;
}

/** Ed25519 signature (RFC 8032, deterministic) of `message` with a 32-byte seed. */
export function sign(seed: Uint8Array, message: Uint8Array): Uint8Array {
  const pair = lib().crypto_sign_seed_keypair(rawKey(seed, "Ed25519 seed"));
  try {
    return lib().crypto_sign_detached(message, pair.privateKey);
  } finally {
    lib().memzero(pair.privateKey);
  }
}

/** Whether `signature` is a valid Ed25519 signature of `message`; never throws for a bad one. */
export function verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  rawKey(publicKey, "Ed25519 public key");
  if (!(signature instanceof Uint8Array) || signature.length !== SIGNATURE_SIZE) return false;
  try {
    return lib().crypto_sign_verify_detached(signature, message, publicKey);
  } catch {
    return false;
  }
}

/** Anonymous sealed box (crypto_box_seal) to an X25519 public key; randomized. */
export function seal(publicKey: Uint8Array, data: Uint8Array): Uint8Array {
  try {
    return lib().crypto_box_seal(data, rawKey(publicKey, "X25519 public key"));
  } catch (exc) {
    if (exc instanceof InvalidKeyError) throw exc;
    throw new InvalidKeyError("X25519 public key refused (low-order point)");
  }
}

/** Open a sealed box with a raw X25519 private key; throws DecryptionError otherwise. */
export function unseal(privateKey: Uint8Array, data: Uint8Array): Uint8Array {
  const publicKey = encPublicFromPrivate(privateKey);
  try {
    return lib().crypto_box_seal_open(data, publicKey, privateKey);
  } catch {
    throw new DecryptionError("sealed box could not be opened");
  }
}

export function randomBytes(n: number): Uint8Array {
  return lib().randombytes_buf(n);
}
