// Directory proofs (src/crypto/directory.ts) against a directory tree built here
// the way DESIGN.md "Key transparency" describes it, and the ways an operator
// could lie: another agency's leaf, a hidden second leaf, a missing neighbour.
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import { canonicalJson } from "../src/crypto/canonical";
import { DirectoryProofError, verifyDirectoryProof, type DirectoryLeaf } from "../src/crypto/directory";
import { b64Encode } from "../src/crypto/encoding";
import { leafHash, rootFromLeafHashes } from "../src/crypto/merkle";
import { ready } from "../src/crypto/sodium";

before(async () => {
  await ready();
});

/** RFC 9162 2.1.3.1 PATH(m, D[n]), written out for the test. */
function path(m: number, leaves: Uint8Array[]): Uint8Array[] {
  if (leaves.length <= 1) return [];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return m < k
    ? [...path(m, leaves.slice(0, k)), rootFromLeafHashes(leaves.slice(k))]
    : [...path(m - k, leaves.slice(k)), rootFromLeafHashes(leaves.slice(0, k))];
}

const ids = ["1", "3", "5", "7", "9"].map((d) => `${d}0000000-0000-4000-8000-000000000000`);
const leaves: DirectoryLeaf[] = ids.map((agency, i) => ({ agency, status: "active", enc_kid: `enc${i}`, sig_kid: `sig${i}`, event: 10 + i }));

function build(ls: DirectoryLeaf[]) {
  const hashes = ls.map((l) => leafHash(canonicalJson(l)));
  const root = rootFromLeafHashes(hashes);
  const at = (i: number) => ({ index: i, leaf: ls[i], hashes: path(i, hashes).map(b64Encode) });
  const proof = (i: number) => ({
    tree_size: 99, directory_size: ls.length, ...at(i),
    neighbours: [i - 1, i + 1].filter((j) => j >= 0 && j < ls.length).map(at),
  });
  return { root, proof, dir: { size: ls.length, root } };
}

describe("directory proofs", () => {
  test("each agency's leaf verifies with its neighbours, first and last included", () => {
    const { proof, dir } = build(leaves);
    for (let i = 0; i < ids.length; i++) {
      assert.deepEqual(verifyDirectoryProof(proof(i), ids[i] as string, dir), leaves[i]);
    }
  });

  test("a proof for another agency is refused", () => {
    const { proof, dir } = build(leaves);
    assert.throws(() => verifyDirectoryProof(proof(1), ids[2] as string, dir), DirectoryProofError);
  });

  test("a missing neighbour is refused", () => {
    const { proof, dir } = build(leaves);
    const p = proof(2);
    p.neighbours = p.neighbours.slice(0, 1);
    assert.throws(() => verifyDirectoryProof(p, ids[2] as string, dir), /neighbour/);
  });

  test("a directory that lists an agency twice is caught by the sort order", () => {
    const twice = [...leaves.slice(0, 3), { ...(leaves[2] as DirectoryLeaf), enc_kid: "swapped" }, ...leaves.slice(3)];
    const { proof, dir } = build(twice);
    assert.throws(() => verifyDirectoryProof(proof(3), ids[2] as string, dir), /sorted/);
    assert.throws(() => verifyDirectoryProof(proof(2), ids[2] as string, dir), /sorted/);
  });

  test("a leaf that is not in the signed root is refused", () => {
    const { proof, dir } = build(leaves);
    const p = proof(1);
    p.leaf = { ...(p.leaf as DirectoryLeaf), enc_kid: "attacker" };
    assert.throws(() => verifyDirectoryProof(p, ids[1] as string, dir), /not in the signed directory/);
    const other = build(leaves.slice(0, 4));
    assert.throws(() => verifyDirectoryProof(proof(1), ids[1] as string, other.dir), DirectoryProofError);
  });
});
