/**
 * The agency key file written by `refgate keygen` (app/client/keyfile.py),
 * in both forms: plain (`enc_private`, `sig_seed`, `auth_seed`) or sealed
 * (`sealed`: Argon2id + secretbox over the JSON of those three values).
 * Private keys are returned as raw bytes to be held in memory only.
 */
import { parseJsonStrict } from "./canonical";
import { b64urlDecode, b64urlEncode, fromUtf8 } from "./encoding";
import * as keys from "./keys";
import { openWithPassphrase, PassphraseError } from "./passphrase";

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
