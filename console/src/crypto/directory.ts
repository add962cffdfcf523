/**
 * Directory proofs (DESIGN.md, "Key transparency"): the agency's leaf in the
 * directory tree committed by a checkpoint's `directory <n> <root>` line,
 * with its neighbours in sort order, so that a client sees exactly one leaf
 * for that agency and uses only the `enc_kid` / `sig_kid` it states.
 *
 * `GET /v1/agencies/{id}/keys/proof?tree_size=N` answers
 * `{"tree_size", "directory_size", "index", "leaf", "hashes", "neighbours":
 * [{"index", "leaf", "hashes"}, …]}`; leaves are the RFC 8785 bytes of
 * `{"agency", "status", "enc_kid", "sig_kid", "event"}` sorted by agency id,
 * hashed as RFC 6962 leaves; hashes are standard base64.
 */
import { canonicalJson } from "./canonical";
import { b64Decode } from "./encoding";
import { leafHash, verifyInclusion } from "./merkle";

export class DirectoryProofError extends Error {
  override name = "DirectoryProofError";
}

export interface DirectoryLeaf {
  agency: string;
  status: string;
  enc_kid: string;
  sig_kid: string;
  event: number;
}

interface Positioned {
  index: number;
  leaf: DirectoryLeaf;
  hashes: string[];
}

function checkLeaf(value: unknown): DirectoryLeaf {
  const v = value as Record<string, unknown>;
  if (
    typeof v !== "object" || v === null || Object.keys(v).sort().join() !== "agency,enc_kid,event,sig_kid,status"
    || typeof v.agency !== "string" || typeof v.status !== "string" || typeof v.enc_kid !== "string"
    || typeof v.sig_kid !== "string" || !Number.isSafeInteger(v.event)
  ) {
    throw new DirectoryProofError("a directory leaf is malformed");
  }
  return v as unknown as DirectoryLeaf;
}

function included(p: Positioned, size: number, root: Uint8Array): boolean {
  let hashes: Uint8Array[];
  try {
    hashes = p.hashes.map((h) => b64Decode(h, 32));
  } catch {
    return false;
  }
  return verifyInclusion(leafHash(canonicalJson(p.leaf)), p.index, size, hashes, root);
}

/**
 * Verify a directory proof for `agencyId` against the directory line of a
 * verified checkpoint (`size`, `root`); returns the agency's leaf. Throws
 * unless the leaf and every neighbour are included, the neighbours are the
 * adjacent indexes and sort strictly around the agency (so no second leaf
 * for it can exist), and the first/last positions are shown where there is
 * no neighbour on one side.
 */
export function verifyDirectoryProof(
  proof: unknown, agencyId: string, directory: { size: number; root: Uint8Array },
): DirectoryLeaf {
  const p = proof as Record<string, unknown>;
  if (typeof p !== "object" || p === null || !Array.isArray(p.hashes) || !Array.isArray(p.neighbours)) {
    throw new DirectoryProofError("the directory proof is malformed");
  }
  if (p.directory_size !== directory.size) {
    throw new DirectoryProofError("the directory proof is for another directory size than the checkpoint states");
  }
  const own: Positioned = { index: p.index as number, leaf: checkLeaf(p.leaf), hashes: p.hashes as string[] };
  if (own.leaf.agency !== agencyId) throw new DirectoryProofError("the directory proof is for another agency");
  if (!Number.isSafeInteger(own.index) || !included(own, directory.size, directory.root)) {
    throw new DirectoryProofError("the agency's directory leaf is not in the signed directory");
  }
  const neighbours = (p.neighbours as Record<string, unknown>[]).map((n): Positioned => ({
    index: n.index as number, leaf: checkLeaf(n.leaf), hashes: n.hashes as string[],
  }));
  const left = neighbours.find((n) => n.index === own.index - 1);
  const right = neighbours.find((n) => n.index === own.index + 1);
  if ((own.index > 0 && !left) || (own.index < directory.size - 1 && !right)) {
    throw new DirectoryProofError("the directory proof lacks a neighbour of the agency's leaf");
  }
  for (const n of [left, right]) {
    if (n && !included(n, directory.size, directory.root)) {
      throw new DirectoryProofError("a neighbouring directory leaf is not in the signed directory");
    }
  }
  if ((left && !(left.leaf.agency < agencyId)) || (right && !(agencyId < right.leaf.agency))) {
    throw new DirectoryProofError("the directory's leaves are not sorted around the agency: it may list the agency twice");
  }
  return own.leaf;
}
