/**
 * The agency key file written by `refgate keygen` (app/client/keyfile.py),
 * in both forms: plain (`enc_private`, `sig_seed`, `auth_seed`) or sealed
 * (`sealed`: Argon2id + secretbox over the JSON of those three values).
 * Private keys are returned as raw bytes to be held in memory only.
 */
import { parseJsonStrict } from "./canonical";
import { b64urlDecode, b64urlEncode, fromUtf8, utf8 } from "./encoding";
import * as keys from "./keys";
import { openWithPassphrase, PassphraseError, sealWithPassphrase } from "./passphrase";
import { lib } from "./sodium";

export class KeyFileError extends Error {
  override name = "KeyFileError";
}

export interface KeyFileSettings {
  server: string | null;
  agency_id: string | null;
  client_id: string | null;
  role: string | null;
}

export interface AgencySecrets {
  encPrivate: Uint8Array;
  sigSeed: Uint8Array;
  authSeed: Uint8Array;
}

export interface ParsedKeyFile {
  settings: KeyFileSettings;
  sealed: unknown | null; // the sealed object, when the file needs a passphrase
  plain: AgencySecrets | null;
}

const SETTINGS = ["server", "agency_id", "client_id", "role"] as const;

function secrets(data: Record<string, unknown>): AgencySecrets {
  const raw = (name: string): Uint8Array => {
    try {
      return b64urlDecode(data[name], keys.KEY_SIZE);
    } catch {
      throw new KeyFileError(`${name} must be base64url of 32 bytes`);
    }
  };
  return { encPrivate: raw("enc_private"), sigSeed: raw("sig_seed"), authSeed: raw("auth_seed") };
}

/** Parse a key file's text; a sealed file comes back with `sealed` set and `plain` null. */
export function parseKeyFile(text: string): ParsedKeyFile {
  let data: unknown;
  try {
    data = parseJsonStrict(text);
  } catch {
    throw new KeyFileError("this file is not JSON, so it is not a refgate key file");
  }
  if (typeof data !== "object" || data === null || (data as Record<string, unknown>).v !== 1) {
    throw new KeyFileError("this file is not a version 1 refgate key file");
  }
  const d = data as Record<string, unknown>;
  const settings = {} as Record<string, string | null>;
  for (const name of SETTINGS) {
    const value = d[name] ?? null;
    if (value !== null && typeof value !== "string") throw new KeyFileError(`${name} must be a string or null`);
    settings[name] = value as string | null;
  }
  if ("sealed" in d) return { settings: settings as unknown as KeyFileSettings, sealed: d.sealed, plain: null };
  return { settings: settings as unknown as KeyFileSettings, sealed: null, plain: secrets(d) };
}

/** Open a sealed key file's private part (Argon2id with the file's limits: slow). */
export function unsealKeyFile(parsed: ParsedKeyFile, passphrase: Uint8Array): AgencySecrets {
  if (parsed.plain) return parsed.plain;
  let inner: Uint8Array;
  try {
    inner = openWithPassphrase(parsed.sealed, passphrase);
  } catch (exc) {
    if (exc instanceof PassphraseError) throw new KeyFileError(`cannot open the key file: ${exc.message}`);
    throw exc;
  }
  return secretsFromUnsealed(inner);
}

/** The private keys in the plaintext of a sealed key file (what `openWithPassphrase` returned). */
export function secretsFromUnsealed(inner: Uint8Array): AgencySecrets {
  let data: unknown;
  try {
    data = parseJsonStrict(fromUtf8(inner));
  } catch {
    throw new KeyFileError("the sealed key file does not hold JSON");
  }
  if (typeof data !== "object" || data === null) throw new KeyFileError("the sealed key file does not hold a JSON object");
  return secrets(data as Record<string, unknown>);
}

/** The base64url public keys of a key file (what an administrator registers). */
export function publicKeys(s: AgencySecrets): { enc_key: string; sign_key: string; auth_key: string } {
  return {
    enc_key: b64urlEncode(keys.encPublicFromPrivate(s.encPrivate)),
    sign_key: b64urlEncode(keys.sigPublicFromSeed(s.sigSeed)),
    auth_key: b64urlEncode(keys.sigPublicFromSeed(s.authSeed)),
  };
}

/** Fresh X25519 (encryption), Ed25519 (signing) and Ed25519 (client auth) keys from libsodium's CSPRNG. */
export function generateSecrets(): AgencySecrets {
  const s = lib();
  return {
    encPrivate: s.randombytes_buf(keys.KEY_SIZE),
    sigSeed: s.randombytes_buf(keys.KEY_SIZE),
    authSeed: s.randombytes_buf(keys.KEY_SIZE),
  };
}

/**
 * The sealed key file's JSON object, exactly as `refgate keygen --passphrase`
 * writes it (KeyFile.to_json): the routing members in the clear, the three
 * private keys as compact JSON in a passphrase-sealed box (Argon2id + secretbox;
 * libsodium's moderate profile unless limits are given).
 */
export function sealedKeyFile(
  s: AgencySecrets, settings: KeyFileSettings, passphrase: Uint8Array, opslimit?: number, memlimit?: number,
): Record<string, unknown> {
  const inner = utf8(JSON.stringify({
    enc_private: b64urlEncode(s.encPrivate), sig_seed: b64urlEncode(s.sigSeed), auth_seed: b64urlEncode(s.authSeed),
  }));
  try {
    const sealed = sealWithPassphrase(inner, passphrase, opslimit, memlimit);
    return { v: 1, server: settings.server, agency_id: settings.agency_id, client_id: settings.client_id, role: settings.role, sealed };
  } catch (exc) {
    if (exc instanceof PassphraseError) throw new KeyFileError(exc.message);
    throw exc;
  } finally {
    lib().memzero(inner);
  }
}

/**
 * The public-key file handed to an administrator: the three public keys
 * (what `refgate keygen --json` prints) and the role the client is meant for.
 * It holds nothing secret.
 */
export interface PublicKeyFile {
  refgate_public_keys: 1;
  name: string | null;
  role: string | null;
  enc_key: string;
  sign_key: string;
  auth_key: string;
}

export function publicKeyFile(
  pub: { enc_key: string; sign_key: string; auth_key: string }, name: string | null, role: string | null,
): PublicKeyFile {
  return { refgate_public_keys: 1, name, role, enc_key: pub.enc_key, sign_key: pub.sign_key, auth_key: pub.auth_key };
}

/** Read a public-key file (or the JSON `refgate keygen --json` prints): three base64url 32-byte keys. */
export function parsePublicKeyFile(text: string): { name: string | null; role: string | null; enc_key: string; sign_key: string; auth_key: string } {
  let data: unknown;
  try {
    data = parseJsonStrict(text);
  } catch {
    throw new KeyFileError("this file is not JSON, so it is not a public-key file");
  }
  if (typeof data !== "object" || data === null) throw new KeyFileError("this file is not a public-key file");
  const d = data as Record<string, unknown>;
  // `refgate keygen --json` prints {"sealed": true|false, …} beside the public keys: only a
  // sealed object or a private member makes this a private key file
  if ((typeof d.sealed === "object" && d.sealed !== null) || "enc_private" in d || "sig_seed" in d || "auth_seed" in d) {
    throw new KeyFileError("this is a private key file: ask the agency for its public-key file instead, and tell them to keep this one private");
  }
  const out = { name: null as string | null, role: null as string | null, enc_key: "", sign_key: "", auth_key: "" };
  for (const k of ["enc_key", "sign_key", "auth_key"] as const) {
    try {
      b64urlDecode(d[k], keys.KEY_SIZE);
    } catch {
      throw new KeyFileError(`${k} must be a base64url public key of 32 bytes`);
    }
    out[k] = d[k] as string;
  }
  if (typeof d.name === "string") out.name = d.name;
  if (typeof d.role === "string") out.role = d.role;
  return out;
}
