// Interoperability with the Python implementation, driven by
// tests/console/test_console_interop.py: `node dist-test/interop.mjs in.json out.json`.
// Reads what Python made (an envelope, a status with a note, a sealed key
// file, a signed checkpoint, Merkle proofs), checks each with the console's
// code, and writes what the console makes (an envelope, an amendment, a
// status, a sealed key file) for Python to open. Any failure exits non-zero.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { openCheckpoint } from "../src/crypto/checkpoint";
import { parseWitnessKey, validCosigners } from "../src/crypto/cosignature";
import { b64Decode, b64urlDecode, b64urlEncode, utf8 } from "../src/crypto/encoding";
import * as env from "../src/crypto/envelope";
import { generateSecrets, parseKeyFile, parsePublicKeyFile, publicKeyFile, publicKeys, sealedKeyFile, unsealKeyFile } from "../src/crypto/keyfile";
import { encPublicFromPrivate, sigPublicFromSeed } from "../src/crypto/keys";
import { leafHash, verifyConsistency, verifyInclusion } from "../src/crypto/merkle";
import { lib, ready } from "../src/crypto/sodium";

await ready();
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const input: any = JSON.parse(readFileSync(process.argv[2] as string, "utf8"));
const key = (s: string): Uint8Array => b64urlDecode(s, 32);
const A = input.sender;
const B = input.recipient;

// 1. Python's envelope opens for the recipient with exactly the consented fields
const opened = env.openEnvelope(input.envelope, B.agency_id, key(B.enc_private), sigPublicFromSeed(key(A.sig_seed)));
assert.deepEqual(opened.fields, input.expect_recipient_fields);
const asSender = env.openEnvelope(input.envelope, A.agency_id, key(A.enc_private), sigPublicFromSeed(key(A.sig_seed)));
assert.deepEqual(asSender.fields, input.fields);

// 2. Python's signed status verifies; its note opens for the sender
env.verifyStatus({ ...input.status, recipient: B.agency_id }, input.envelope.manifest.referral_id, sigPublicFromSeed(key(B.sig_seed)));
assert.equal(env.openNote(input.status.note, key(A.enc_private)), input.note);
assert.throws(() => env.verifyStatus({ ...input.status, status: "rejected", recipient: B.agency_id },
  input.envelope.manifest.referral_id, sigPublicFromSeed(key(B.sig_seed))));

// 3. Python's sealed key file opens with its passphrase (Argon2id limits from the file), not without
const parsed = parseKeyFile(input.keyfile_text);
const secrets = unsealKeyFile(parsed, utf8(input.passphrase));
assert.equal(b64urlEncode(secrets.encPrivate), A.enc_private);
assert.deepEqual(publicKeys(secrets), input.keyfile_public);
assert.throws(() => unsealKeyFile(parsed, utf8(`${input.passphrase}x`)));

// 4. Python's checkpoint verifies, with its witness cosignature; a rewritten one does not
const cp = openCheckpoint(input.checkpoint, input.log_key);
assert.equal(cp.size, input.tree_size);
assert.equal(b64urlEncode(cp.root), b64urlEncode(b64Decode(input.root)));
assert.deepEqual(validCosigners(cp, [parseWitnessKey(input.witness_key)]), [input.witness_key.split("+")[0]]);
assert.throws(() => openCheckpoint(input.checkpoint.replace(`\n${input.tree_size}\n`, `\n${input.tree_size + 1}\n`), input.log_key));

// 5. every Python inclusion and consistency proof verifies; each altered one fails
const h = (s: string): Uint8Array => b64Decode(s, 32);
for (const p of input.inclusion) {
  const proof = p.hashes.map(h);
  assert.ok(verifyInclusion(h(p.leaf), p.index, p.size, proof, h(p.root)), `inclusion ${p.index}/${p.size}`);
  if ((p.index ^ 1) < p.size) assert.ok(!verifyInclusion(h(p.leaf), p.index ^ 1, p.size, proof, h(p.root)));
  if (proof.length) {
    proof[0] = leafHash(utf8("x"));
    assert.ok(!verifyInclusion(h(p.leaf), p.index, p.size, proof, h(p.root)));
  }
}
for (const p of input.consistency) {
  const proof = p.hashes.map(h);
  assert.ok(verifyConsistency(p.first, p.second, proof, h(p.first_root), h(p.second_root)), `consistency ${p.first}->${p.second}`);
  if (p.first !== p.second) assert.ok(!verifyConsistency(p.first, p.second, proof, h(p.second_root), h(p.second_root)));
}

// 6. what the console makes, for Python to open
const referralId = crypto.randomUUID();
const sealed = env.sealEnvelope({
  referralId, senderAgency: A.agency_id, senderSigSeed: key(A.sig_seed), senderEncPublic: encPublicFromPrivate(key(A.enc_private)),
  fields: Object.entries(input.fields) as [string, string][],
  grants: [{ field: "full_name", recipient: B.agency_id, encPublic: encPublicFromPrivate(key(B.enc_private)), purpose: "investigation", expiresAt: input.expires_at }],
  requests: [{ recipient: B.agency_id, services: ["investigation"], urgency: "emergency", caseRef: "js-1" }],
  createdAt: input.created_at,
});
const amendment = env.amend({
  document: sealed.body, senderAgency: A.agency_id, senderSigSeed: key(A.sig_seed), senderEncPrivate: key(A.enc_private),
  grants: [{ field: "narrative", recipient: B.agency_id, encPublic: encPublicFromPrivate(key(B.enc_private)), purpose: "investigation", expiresAt: input.expires_at }],
  requests: [],
});
const note = env.sealNote(input.note, encPublicFromPrivate(key(A.enc_private)));
const status = env.signStatus({
  referralId, recipient: B.agency_id, status: "accepted", reason: null, note, signedAt: input.created_at, sigSeed: key(B.sig_seed),
});
const s = lib();
const keyfile = sealedKeyFile(
  { encPrivate: key(A.enc_private), sigSeed: key(A.sig_seed), authSeed: key(A.auth_seed) },
  { server: null, agency_id: A.agency_id, client_id: null, role: "caseworker" },
  utf8(input.passphrase), s.crypto_pwhash_OPSLIMIT_INTERACTIVE, s.crypto_pwhash_MEMLIMIT_INTERACTIVE,
);
// 7. a key file made as the onboarding page makes it (fresh keys), with its public-key file
const fresh = generateSecrets();
const freshPublic = publicKeyFile(publicKeys(fresh), "New Agency ✔", "liaison");
const freshFile = sealedKeyFile(fresh, { server: "http://127.0.0.1", agency_id: null, client_id: null, role: "liaison" },
  utf8(input.passphrase), s.crypto_pwhash_OPSLIMIT_INTERACTIVE, s.crypto_pwhash_MEMLIMIT_INTERACTIVE);
assert.deepEqual(parsePublicKeyFile(JSON.stringify(freshPublic)).enc_key, freshPublic.enc_key);
assert.throws(() => parsePublicKeyFile(JSON.stringify(freshFile)), /private key file/);
// what `refgate keygen --json` prints is accepted too
assert.equal(parsePublicKeyFile(JSON.stringify({ key_file: "a.json", sealed: true, ...publicKeys(fresh) })).auth_key, freshPublic.auth_key);
assert.throws(() => sealedKeyFile(fresh, { server: null, agency_id: null, client_id: null, role: null }, new Uint8Array(0)));
writeFileSync(process.argv[3] as string, JSON.stringify({ envelope: sealed.body, fids: sealed.fids, amendment, status, keyfile, fresh_keyfile: freshFile, fresh_public: freshPublic }));
console.log("interop ok");
