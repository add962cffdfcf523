/**
 * Binary encodings of the wire (DESIGN.md, "Wire format"): base64url without
 * padding everywhere, standard base64 with padding in checkpoints and proofs.
 * Decoding is strict like app/crypto/encoding.py: one spelling per value.
 */

export class EncodingError extends Error {
  override name = "EncodingError";
}

const B64URL = /^[A-Za-z0-9_-]*$/;
const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

function toBinaryString(data: Uint8Array): string {
  let out = "";
  for (let i = 0; i < data.length; i += 0x8000) {
    out += String.fromCharCode(...data.subarray(i, i + 0x8000));
  }
  return out;
}

function fromBinaryString(text: string): Uint8Array {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

export function b64Encode(data: Uint8Array): string {
  return btoa(toBinaryString(data));
}

export function b64urlEncode(data: Uint8Array): string {
  return b64Encode(data).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function checkLength(data: Uint8Array, length: number | undefined): Uint8Array {
  if (length !== undefined && data.length !== length) {
    throw new EncodingError(`expected ${length} bytes, got ${data.length}`);
  }
  return data;
}

/** Decode unpadded base64url; refuses padding, other characters and non-canonical forms. */
export function b64urlDecode(text: unknown, length?: number): Uint8Array {
  if (typeof text !== "string" || !B64URL.test(text) || text.length % 4 === 1) {
    throw new EncodingError("not base64url without padding");
  }
  const std = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  let data: Uint8Array;
  try {
    data = fromBinaryString(atob(std));
  } catch {
    throw new EncodingError("not base64url without padding");
  }
  if (b64urlEncode(data) !== text) throw new EncodingError("non-canonical base64url");
  return checkLength(data, length);
}

/** Decode standard padded base64 strictly (checkpoints, proofs). */
export function b64Decode(text: unknown, length?: number): Uint8Array {
  if (typeof text !== "string" || !B64.test(text) || text.length % 4 !== 0) {
    throw new EncodingError("not standard base64");
  }
  let data: Uint8Array;
  try {
    data = fromBinaryString(atob(text));
  } catch {
    throw new EncodingError("not standard base64");
  }
  if (b64Encode(data) !== text) throw new EncodingError("non-canonical base64");
  return checkLength(data, length);
}

export function hex(data: Uint8Array): string {
  return Array.from(data, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(text: string): Uint8Array {
  if (!/^(?:[0-9a-f]{2})*$/.test(text)) throw new EncodingError("not lowercase hex");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

export function utf8(text: string): Uint8Array {
  return encoder.encode(text);
}

/** Strict UTF-8 decoding: invalid bytes throw instead of becoming U+FFFD. */
export function fromUtf8(data: Uint8Array): string {
  return decoder.decode(data);
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Constant-time equality of two byte strings (lengths are not secret). */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= (a[i] as number) ^ (b[i] as number);
  return diff === 0;
}
