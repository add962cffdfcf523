/**
 * Witness cosignatures on checkpoints (C2SP tlog-cosignature, cosignature/v1,
 * Ed25519): which configured witnesses cosigned a checkpoint. The k-of-n
 * quorum a client requires is enforced by `Trust` (../trust.ts; DESIGN.md, "Witnesses").
 *
 * A witness is configured as a vkey `<name>+<key hash>+<base64(0x04 || key)>`;
 * its key ID is SHA-256(name || "\n" || 0x04 || key)[:4]. A cosignature line
 * carries base64(key ID || u64 big-endian timestamp || Ed25519 signature)
 * over "cosignature/v1\ntime <timestamp>\n" + the checkpoint's note text.
 */
import { b64Decode, concat, hex, utf8 } from "./encoding";
import type { Checkpoint } from "./checkpoint";
import { CheckpointError, keyHash } from "./checkpoint";
import { verify } from "./keys";

const ALG_COSIGNATURE_V1 = 0x04;

export interface Witness {
  name: string;
  keyHash: Uint8Array;
  publicKey: Uint8Array;
}

/** Parse a witness verifier key (algorithm 0x04). */
export function parseWitnessKey(vkey: string): Witness {
  const parts = vkey.trim().split("+");
  if (parts.length < 3) throw new CheckpointError("a witness key must be <name>+<key hash>+<key>");
  const [name, hashHex] = parts as [string, string];
  let key: Uint8Array;
  try {
    key = b64Decode(parts.slice(2).join("+"));
  } catch {
    throw new CheckpointError(`witness key ${name}: not canonical base64`);
  }
  if (key.length !== 33 || key[0] !== ALG_COSIGNATURE_V1) {
    throw new CheckpointError(`witness key ${name}: not an Ed25519 cosignature/v1 (0x04) key`);
  }
  const publicKey = key.slice(1);
  const kh = keyHash(name, ALG_COSIGNATURE_V1, publicKey);
  if (hex(kh) !== hashHex) throw new CheckpointError(`witness key ${name}: key hash does not match`);
  return { name, keyHash: kh, publicKey };
}

/** The witnesses among `witnesses` whose cosignature on `cp` verifies (each counted once). */
export function validCosigners(cp: Checkpoint, witnesses: Witness[]): string[] {
  const out = new Set<string>();
  for (const w of witnesses) {
    for (const s of cp.signatures) {
      if (s.name !== w.name || hex(s.keyHash) !== hex(w.keyHash) || s.signature.length !== 72) continue;
      const view = new DataView(s.signature.buffer, s.signature.byteOffset, 8);
      const time = view.getBigUint64(0);
      if (time > 2n ** 63n - 1n) continue;
      const message = concat(utf8(`cosignature/v1\ntime ${time}\n`), utf8(cp.text));
      if (verify(w.publicKey, message, s.signature.slice(8))) out.add(w.name);
    }
  }
  return [...out];
}
