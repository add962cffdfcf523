/**
 * Passphrase-sealed secrets (the agency key file): Argon2id + crypto_secretbox,
 * a port of app/crypto/passphrase.py. The cost parameters come from the file
 * and are bounded to [interactive, sensitive] as in Python, so a crafted file
 * can neither weaken the KDF nor make the page allocate more than 1 GiB.
 */
import { b64urlDecode, b64urlEncode } from "./encoding";
import { lib } from "./sodium";

export class PassphraseError extends Error {
  override name = "PassphraseError";
}

export interface SealedSecret {
  kdf: "argon2id";
  opslimit: number;
  memlimit: number;
  salt: string;
  box: string;
}

const MEMBERS = ["box", "kdf", "memlimit", "opslimit", "salt"];

function bounds(): { ops: [number, number]; mem: [number, number] } {
  const s = lib();
  return {
    ops: [s.crypto_pwhash_OPSLIMIT_INTERACTIVE, s.crypto_pwhash_OPSLIMIT_SENSITIVE],
    mem: [s.crypto_pwhash_MEMLIMIT_INTERACTIVE, s.crypto_pwhash_MEMLIMIT_SENSITIVE],
  };
}

function limit(value: unknown, [lo, hi]: [number, number], what: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < lo || value > hi) {
    throw new PassphraseError(`${what} must be an integer in [${lo}, ${hi}]`);
  }
  return value;
}

function derive(passphrase: Uint8Array, salt: Uint8Array, ops: number, mem: number): Uint8Array {
  const s = lib();
  return s.crypto_pwhash(s.crypto_secretbox_KEYBYTES, passphrase, salt, ops, mem, s.crypto_pwhash_ALG_ARGON2ID13);
}

/** Decrypt a sealed object, or throw PassphraseError (wrong passphrase or altered file). */
export function openWithPassphrase(sealed: unknown, passphrase: Uint8Array): Uint8Array {
  if (passphrase.length === 0) throw new PassphraseError("the passphrase must not be empty");
  if (typeof sealed !== "object" || sealed === null || Object.keys(sealed).sort().join() !== MEMBERS.join()) {
    throw new PassphraseError(`a sealed object has exactly the members ${MEMBERS.join(", ")}`);
  }
  const o = sealed as Record<string, unknown>;
  if (o.kdf !== "argon2id") throw new PassphraseError("unsupported kdf; only argon2id is known");
  const b = bounds();
  const ops = limit(o.opslimit, b.ops, "opslimit");
  const mem = limit(o.memlimit, b.mem, "memlimit");
  let salt: Uint8Array;
  let blob: Uint8Array;
  try {
    salt = b64urlDecode(o.salt, lib().crypto_pwhash_SALTBYTES);
    blob = b64urlDecode(o.box);
  } catch {
    throw new PassphraseError("salt or box is not valid base64url");
  }
  const nonceSize = lib().crypto_secretbox_NONCEBYTES;
  if (blob.length < nonceSize + lib().crypto_secretbox_MACBYTES) {
    throw new PassphraseError("the sealed box is too short");
  }
  const key = derive(passphrase, salt, ops, mem);
  try {
    return lib().crypto_secretbox_open_easy(blob.subarray(nonceSize), blob.subarray(0, nonceSize), key);
  } catch {
    throw new PassphraseError("wrong passphrase, or the sealed data was altered");
  } finally {
    lib().memzero(key);
  }
}

/** Encrypt `data` under a key derived from `passphrase` (same format as Python's). */
export function sealWithPassphrase(
  data: Uint8Array, passphrase: Uint8Array, opslimit?: number, memlimit?: number,
): SealedSecret {
  const s = lib();
  if (passphrase.length === 0) throw new PassphraseError("the passphrase must not be empty");
  const b = bounds();
  const ops = limit(opslimit ?? s.crypto_pwhash_OPSLIMIT_MODERATE, b.ops, "opslimit");
  const mem = limit(memlimit ?? s.crypto_pwhash_MEMLIMIT_MODERATE, b.mem, "memlimit");
  const salt = s.randombytes_buf(s.crypto_pwhash_SALTBYTES);
  const nonce = s.randombytes_buf(s.crypto_secretbox_NONCEBYTES);
  const key = derive(passphrase, salt, ops, mem);
  try {
    const box = s.crypto_secretbox_easy(data, nonce, key);
    const blob = new Uint8Array(nonce.length + box.length);
    blob.set(nonce);
    blob.set(box, nonce.length);
    return { kdf: "argon2id", opslimit: ops, memlimit: mem, salt: b64urlEncode(salt), box: b64urlEncode(blob) };
  } finally {
    s.memzero(key);
  }
}
