/**
 * RFC 6962 / RFC 9162 Merkle verification (SHA-256 from libsodium), a port of
 * the verifiers in app/crypto/merkle.py: leaf = SHA-256(0x00 || data),
 * node = SHA-256(0x01 || l || r). Verifiers answer false, never throw.
 */
import { concat, equalBytes } from "./encoding";
import { sha256 } from "./keys";

export const HASH_SIZE = 32;
export const EMPTY_ROOT_INPUT = new Uint8Array(0);

export function leafHash(data: Uint8Array): Uint8Array {
  return sha256(concat(Uint8Array.of(0), data));
}

export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  if (left.length !== HASH_SIZE || right.length !== HASH_SIZE) throw new Error("child hashes must be 32 bytes");
  return sha256(concat(Uint8Array.of(1), left, right));
}

export function emptyRoot(): Uint8Array {
  return sha256(EMPTY_ROOT_INPUT);
}

function validHashes(...hashes: Uint8Array[]): boolean {
  return hashes.every((h) => h instanceof Uint8Array && h.length === HASH_SIZE);
}

// Sizes and indexes are JS numbers: exact up to 2**53, far beyond any log here.
const shr = (n: number): number => Math.floor(n / 2);
const odd = (n: number): boolean => n % 2 === 1;

function isPowerOfTwo(n: number): boolean {
  while (n > 1 && !odd(n)) n = shr(n);
  return n === 1;
}

/** Whether `proof` shows leaf hash `leaf` at `index` in the tree (size, root): RFC 9162 2.1.3.2. */
export function verifyInclusion(
  leaf: Uint8Array, index: number, size: number, proof: Uint8Array[], root: Uint8Array,
): boolean {
  if (!(Number.isSafeInteger(index) && Number.isSafeInteger(size) && index >= 0 && index < size)) return false;
  if (!validHashes(leaf, root, ...proof)) return false;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      r = nodeHash(p, r);
      while (!(odd(fn) || fn === 0)) {
        fn = shr(fn);
        sn = shr(sn);
      }
    } else {
      r = nodeHash(r, p);
    }
    fn = shr(fn);
    sn = shr(sn);
  }
  return sn === 0 && equalBytes(r, root);
}

/** Whether the tree (second, secondRoot) extends (first, firstRoot): RFC 9162 2.1.4.2. */
export function verifyConsistency(
  first: number, second: number, proof: Uint8Array[], firstRoot: Uint8Array, secondRoot: Uint8Array,
): boolean {
  if (!(Number.isSafeInteger(first) && Number.isSafeInteger(second) && first >= 0 && first <= second)) return false;
  if (!validHashes(firstRoot, secondRoot, ...proof)) return false;
  if (first === 0 || first === second) {
    const emptyOk = first !== 0 || equalBytes(firstRoot, emptyRoot());
    const sameOk = first !== second || equalBytes(firstRoot, secondRoot);
    return proof.length === 0 && emptyOk && sameOk;
  }
  if (proof.length === 0) return false;
  const path = [...proof];
  if (isPowerOfTwo(first)) path.unshift(firstRoot);
  let fn = first - 1;
  let sn = second - 1;
  while (odd(fn)) {
    fn = shr(fn);
    sn = shr(sn);
  }
  let fr = path[0] as Uint8Array;
  let sr = fr;
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while (!(odd(fn) || fn === 0)) {
        fn = shr(fn);
        sn = shr(sn);
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn = shr(fn);
    sn = shr(sn);
  }
  return sn === 0 && equalBytes(fr, firstRoot) && equalBytes(sr, secondRoot);
}

/** Root of a list of leaf hashes (MTH): for tests and small directory trees. */
export function rootFromLeafHashes(leaves: Uint8Array[]): Uint8Array {
  if (leaves.length === 0) return emptyRoot();
  if (leaves.length === 1) return leaves[0] as Uint8Array;
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(rootFromLeafHashes(leaves.slice(0, k)), rootFromLeafHashes(leaves.slice(k)));
}
