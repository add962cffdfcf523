/**
 * Signed checkpoints (C2SP signed-note + tlog-checkpoint, Ed25519): a port of
 * app/crypto/checkpoint.py's verifying half. `openCheckpoint` returns only a
 * checkpoint whose text the given key signed, whose origin is that key's
 * name and whose every line parses strictly. Lines by other keys (witness
 * cosignatures) are ignored here and checked by ./cosignature.
 */
import { b64Decode, concat, EncodingError, hex, utf8 } from "./encoding";
import { sha256, verify } from "./keys";

const ALG_ED25519 = 0x01;
const KEY_ID_SIZE = 4;
const MAX_SIGNATURES = 100;
const SIG_PREFIX = "\u2014 ";
const DECIMAL = /^(0|[1-9][0-9]*)$/;
const KEY_HASH_HEX = /^[0-9a-f]{8}$/;

export class CheckpointError extends Error {
  override name = "CheckpointError";
}

export interface VerifierKey {
  name: string;
  keyHash: Uint8Array;
  publicKey: Uint8Array;
}

export interface SignatureLine {
  name: string;
  keyHash: Uint8Array;
  signature: Uint8Array; // after the 4-byte key hash
}

export interface Checkpoint {
  origin: string;
  size: number;
  root: Uint8Array;
  note: string;
  text: string;
  extensions: string[];
  signatures: SignatureLine[];
}

function validName(name: string): boolean {
  return name.length > 0 && !name.includes("+") && !/\s/.test(name);
}

export function keyHash(name: string, alg: number, publicKey: Uint8Array): Uint8Array {
  return sha256(concat(utf8(name + "\n"), Uint8Array.of(alg), publicKey)).slice(0, KEY_ID_SIZE);
}

/** Parse `<name>+<8 hex key hash>+<base64(0x01 || key)>`, refusing anything not canonical. */
export function parseVerifierKey(vkey: string): VerifierKey {
  const first = vkey.indexOf("+");
  const second = first < 0 ? -1 : vkey.indexOf("+", first + 1);
  if (first < 0 || second < 0) throw new CheckpointError("verifier key must be <name>+<key hash>+<key>");
  const name = vkey.slice(0, first);
  const hashHex = vkey.slice(first + 1, second);
  if (!validName(name)) throw new CheckpointError("invalid key name in the verifier key");
  if (!KEY_HASH_HEX.test(hashHex)) throw new CheckpointError("verifier key hash must be 8 lowercase hex digits");
  let key: Uint8Array;
  try {
    key = b64Decode(vkey.slice(second + 1));
  } catch {
    throw new CheckpointError("verifier key is not canonical base64");
  }
  if (key.length !== 33 || key[0] !== ALG_ED25519) {
    throw new CheckpointError("verifier key is not an Ed25519 (0x01) key of 32 bytes");
  }
  const publicKey = key.slice(1);
  const kh = keyHash(name, ALG_ED25519, publicKey);
  if (hex(kh) !== hashHex) throw new CheckpointError("verifier key hash does not match name and key");
  return { name, keyHash: kh, publicKey };
}

function checkText(text: string): void {
  for (const c of text) {
    if (c < " " && c !== "\n") throw new CheckpointError(`note contains control character U+${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  }
}

/** Split a signed note into its text and parsed signature lines (no verification). */
export function splitNote(note: string): { text: string; signatures: SignatureLine[] } {
  checkText(note);
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new CheckpointError("note has no blank line before its signatures");
  const text = note.slice(0, split + 1);
  const block = note.slice(split + 2);
  if (!block.endsWith("\n")) throw new CheckpointError("note signature block must end with a newline");
  const lines = block.slice(0, -1).split("\n");
  if (lines.length > MAX_SIGNATURES) throw new CheckpointError(`note has more than ${MAX_SIGNATURES} signatures`);
  const signatures = lines.map((line) => {
    if (!line.startsWith(SIG_PREFIX)) throw new CheckpointError("malformed signature line: must start with an em dash and space");
    const rest = line.slice(SIG_PREFIX.length);
    const space = rest.indexOf(" ");
    const name = space < 0 ? "" : rest.slice(0, space);
    if (!validName(name)) throw new CheckpointError("malformed signature line: bad key name");
    let raw: Uint8Array;
    try {
      raw = b64Decode(rest.slice(space + 1));
    } catch (exc) {
      if (exc instanceof EncodingError) throw new CheckpointError("malformed signature line: signature is not base64");
      throw exc;
    }
    if (raw.length <= KEY_ID_SIZE) throw new CheckpointError("malformed signature line: signature too short");
    return { name, keyHash: raw.slice(0, KEY_ID_SIZE), signature: raw.slice(KEY_ID_SIZE) };
  });
  return { text, signatures };
}

/** Verify a signed note against one verifier key and return its text and signature lines. */
export function openNote(note: string, vkey: string): { text: string; signatures: SignatureLine[] } {
  const key = parseVerifierKey(vkey);
  const { text, signatures } = splitNote(note);
  const body = utf8(text);
  let verified = false;
  for (const s of signatures) {
    if (s.name !== key.name || hex(s.keyHash) !== hex(key.keyHash)) continue;
    if (s.signature.length !== 64) throw new CheckpointError(`signature by ${key.name} has the wrong length`);
    if (!verify(key.publicKey, body, s.signature)) throw new CheckpointError(`invalid signature by ${key.name}`);
    verified = true;
  }
  if (!verified) throw new CheckpointError(`note is not signed by ${key.name}+${hex(key.keyHash)}`);
  return { text, signatures };
}

/** Verify a checkpoint against `vkey` and parse origin, size, root and extension lines strictly. */
export function openCheckpoint(note: string, vkey: string): Checkpoint {
  const { text, signatures } = openNote(note, vkey);
  const originName = parseVerifierKey(vkey).name;
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) throw new CheckpointError("checkpoint needs origin, size and root lines");
  const [origin, sizeText, rootB64, ...extensions] = lines as [string, string, string, ...string[]];
  if (origin !== originName) throw new CheckpointError(`checkpoint origin ${origin} is not the key name ${originName}`);
  if (!DECIMAL.test(sizeText)) throw new CheckpointError("checkpoint tree size must be decimal without leading zeros");
  const size = Number(sizeText);
  if (!Number.isSafeInteger(size)) throw new CheckpointError("checkpoint tree size out of range");
  let root: Uint8Array;
  try {
    root = b64Decode(rootB64, 32);
  } catch {
    throw new CheckpointError("checkpoint root must be base64 of 32 bytes");
  }
  if (extensions.some((l) => l.length === 0)) throw new CheckpointError("checkpoint extension lines must be non-empty");
  return { origin, size, root, note, text, extensions, signatures };
}

/**
 * The `directory <number of agencies> <base64 root>` extension line (DESIGN.md,
 * "Key transparency"), or null when the checkpoint has none (a log that
 * predates key transparency by directory).
 */
export function directoryLine(cp: Checkpoint): { size: number; root: Uint8Array } | null {
  const lines = cp.extensions.filter((l) => l.startsWith("directory "));
  if (lines.length === 0) return null;
  if (lines.length > 1) throw new CheckpointError("checkpoint has two directory lines");
  const parts = (lines[0] as string).split(" ");
  if (parts.length !== 3 || !DECIMAL.test(parts[1] as string)) {
    throw new CheckpointError("checkpoint directory line must be: directory <size> <base64 root>");
  }
  let root: Uint8Array;
  try {
    root = b64Decode(parts[2], 32);
  } catch {
    throw new CheckpointError("checkpoint directory root must be base64 of 32 bytes");
  }
  return { size: Number(parts[1]), root };
}
