// Known-answer tests: the console's crypto against tests/vectors/envelope_v2.json,
// step by step as tests/vectors/README.md describes ("Checking an implementation").
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { canonicalJson } from "../src/crypto/canonical";
import { b64urlDecode, b64urlEncode, concat, fromHex, fromUtf8, hex, utf8 } from "../src/crypto/encoding";
import * as env from "../src/crypto/envelope";
import * as keys from "../src/crypto/keys";
import { lib, ready } from "../src/crypto/sodium";

const here = dirname(fileURLToPath(import.meta.url));
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const V: any = JSON.parse(readFileSync(join(here, "..", "..", "tests", "vectors", "envelope_v2.json"), "utf8"));
const ROLES = ["sender", "shelter", "legal", "bystander"] as const;
const agency = (role: string) => V.agencies[role];
const byId = (id: string): string => ROLES.find((r) => agency(r).id === id) as string;

before(async () => {
  await ready();
});

describe("envelope v2 known-answer vectors", () => {
  test("public keys and kids derive from the private keys", () => {
    for (const role of ROLES) {
      const a = agency(role);
      const enc = keys.encPublicFromPrivate(fromHex(a.enc_private_hex));
      const sig = keys.sigPublicFromSeed(fromHex(a.sig_seed_hex));
      assert.equal(hex(enc), a.enc_public_hex);
      assert.equal(b64urlEncode(enc), a.enc_public);
      assert.equal(hex(sig), a.sig_public_hex);
      assert.equal(keys.kid(enc), a.enc_kid);
      assert.equal(keys.kid(sig), a.sig_kid);
    }
  });

  test("each field rebuilds byte for byte: plaintext, ciphertext, hash, commitment", () => {
    for (const f of V.fields) {
      const plaintext = canonicalJson({ name: f.name, value: f.value });
      assert.equal(hex(plaintext), f.plaintext_hex);
      assert.equal(fromUtf8(plaintext), f.plaintext);
      assert.equal(b64urlEncode(fromHex(f.fid_hex)), f.fid);
      const key = fromHex(f.key_hex);
      const nonce = fromHex(f.nonce_hex);
      assert.equal(f.aad, `refgate/v2|${V.referral_id}|${f.fid}`);
      const ct = lib().crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, utf8(f.aad), null, nonce, key);
      const blob = concat(nonce, ct);
      assert.equal(hex(blob), f.ciphertext_hex);
      assert.equal(b64urlEncode(blob), f.ciphertext);
      assert.equal(hex(keys.sha256(blob)), f.ciphertext_sha256_hex);
      assert.equal(b64urlEncode(keys.sha256(blob)), f.ciphertext_sha256);
      const c = env.commitment(key, V.referral_id, f.fid);
      assert.equal(hex(c), f.commitment_hex);
      assert.equal(b64urlEncode(c), f.commitment);
    }
  });

  test("each disclosure decodes, hashes to its digest and re-encodes with JCS", () => {
    for (const d of V.disclosures) {
      assert.equal(fromUtf8(b64urlDecode(d.disclosure)), d.json);
      const parsed = env.parseDisclosure(d.disclosure);
      assert.deepEqual([JSON.parse(d.json)[0], parsed.kind, parsed.value], d.decoded);
      assert.equal(parsed.digest, d.digest);
      assert.equal(hex(b64urlDecode(parsed.digest)), d.digest_hex);
      assert.equal(env.makeDisclosure(b64urlDecode(d.decoded[0]), d.decoded[1], d.decoded[2]), d.disclosure);
      assert.ok(V.manifest.digests.includes(d.digest));
    }
    for (const decoy of V.decoys) assert.ok(V.manifest.digests.includes(decoy));
  });

  test("each wrapped key opens to its field key and hashes as its grant says", () => {
    for (const w of V.wrapped_keys) {
      const data = b64urlDecode(w.wrapped_key);
      assert.equal(hex(data), w.wrapped_key_hex);
      const key = keys.unseal(fromHex(agency(byId(w.recipient)).enc_private_hex), data);
      assert.equal(hex(key), w.field_key_hex);
      assert.equal(b64urlEncode(keys.sha256(data)), w.wrapped_key_sha256);
    }
  });

  test("the manifest canonicalizes and signs to the recorded bytes", () => {
    assert.equal(fromUtf8(canonicalJson(V.manifest)), V.manifest_canonical);
    assert.equal(hex(keys.sha256(canonicalJson(V.manifest))), V.manifest_canonical_sha256_hex);
    const input = env.manifestSigningInput(V.manifest);
    assert.equal(hex(keys.sha256(input)), V.signing_input_sha256_hex);
    const sig = keys.sign(fromHex(agency("sender").sig_seed_hex), input);
    assert.equal(hex(sig), V.signature_hex);
    assert.equal(b64urlEncode(sig), V.signature);
  });

  test("the body and the served views open for each agency exactly as recorded", () => {
    const senderSig = fromHex(agency("sender").sig_public_hex);
    const views: [string, unknown][] = [
      ...ROLES.map((r): [string, unknown] => [r, V.body]),
      ["shelter", V.served.shelter], ["legal", V.served.legal],
    ];
    for (const [role, doc] of views) {
      const opened = env.openEnvelope(doc, agency(role).id, fromHex(agency(role).enc_private_hex), senderSig);
      assert.deepEqual(opened.fields, V.opened[role].fields, role);
      const requests = Object.fromEntries(Object.entries(opened.requests).map(([id, r]) => [byId(id), r]));
      if (doc !== V.body) assert.deepEqual(requests, V.opened[role].requests, role);
    }
  });

  test("sealing with the recorded random stream reproduces every deterministic value", () => {
    const draws: Uint8Array[] = V.random.draws_hex.map(fromHex);
    let i = 0;
    const random = (n: number): Uint8Array => {
      const d = draws[i++] as Uint8Array;
      assert.equal(d.length, n);
      return d;
    };
    const ids = Object.fromEntries(ROLES.map((r) => [r, agency(r).id]));
    const sealed = env.sealEnvelope({
      referralId: V.referral_id, senderAgency: ids.sender, createdAt: V.created_at,
      senderSigSeed: fromHex(agency("sender").sig_seed_hex),
      senderEncPublic: fromHex(agency("sender").enc_public_hex),
      fields: Object.entries(V.inputs.fields) as [string, string][],
      grants: V.inputs.grants.map((g: Record<string, string>) => ({
        field: g.field, recipient: ids[g.recipient as string], encPublic: fromHex(agency(g.recipient as string).enc_public_hex),
        purpose: g.purpose, expiresAt: g.expires_at, releaseRef: g.release_ref,
      })),
      requests: V.inputs.requests.map((r: Record<string, unknown>) => ({
        recipient: ids[r.recipient as string], services: r.services, urgency: r.urgency, caseRef: r.case_ref,
      })),
      unsafeRandom: random,
    });
    assert.equal(i, draws.length, "every draw used");
    assert.deepEqual(sealed.body.ciphertexts, V.body.ciphertexts);
    assert.deepEqual(sealed.fids, Object.fromEntries(V.fields.map((f: { name: string; fid: string }) => [f.name, f.fid])));
    const kinds = (ds: string[], kind: string) => ds.filter((d) => env.parseDisclosure(d).kind === kind);
    assert.deepEqual(kinds(sealed.body.disclosures, "field"), kinds(V.body.disclosures, "field"));
    assert.deepEqual(kinds(sealed.body.disclosures, "request"), kinds(V.body.disclosures, "request"));
    for (const decoy of V.decoys) assert.ok(sealed.body.manifest.digests.includes(decoy));
    const opened = env.openEnvelope(sealed.body, ids.legal, fromHex(agency("legal").enc_private_hex),
      fromHex(agency("sender").sig_public_hex));
    assert.deepEqual(opened.fields, V.opened.legal.fields);
  });

  test("the signed status and its note verify and reproduce", () => {
    const s = V.status;
    const note = env.openNote(s.note, fromHex(agency("sender").enc_private_hex));
    assert.equal(note, s.inputs.note);
    assert.equal(env.noteSha256(s.note), s.note_sha256);
    const input = env.statusSigningInput({
      referralId: s.signed_object.referral_id, recipient: s.signed_object.recipient, status: s.signed_object.status,
      reason: s.signed_object.reason, noteSha256: s.signed_object.note_sha256, signedAt: s.signed_object.signed_at,
    });
    assert.equal(fromUtf8(input), s.signing_input);
    assert.equal(hex(keys.sha256(input)), s.signing_input_sha256_hex);
    const recipient = byId(s.inputs.recipient);
    const body = env.signStatus({
      referralId: s.inputs.referral_id, recipient: s.inputs.recipient, status: s.inputs.status,
      reason: s.inputs.reason, note: s.note, signedAt: s.inputs.signed_at,
      sigSeed: fromHex(agency(recipient).sig_seed_hex),
    });
    assert.deepEqual(body, s.body);
    assert.equal(hex(b64urlDecode(body.signature)), s.signature_hex);
    env.verifyStatus({ ...s.body, recipient: s.inputs.recipient }, s.inputs.referral_id,
      fromHex(agency(recipient).sig_public_hex));
  });
});

describe("tampering is refused", () => {
  const senderSig = () => fromHex(agency("sender").sig_public_hex);
  const legal = () => [agency("legal").id, fromHex(agency("legal").enc_private_hex)] as const;
  const code = (fn: () => unknown, expected: string) =>
    assert.throws(fn, (e: unknown) => e instanceof env.EnvelopeError && e.code === expected);

  test("a rewritten manifest fails the signature", () => {
    const doc = structuredClone(V.body);
    doc.manifest.created_at = "2026-11-20T09:00:00Z";
    code(() => env.openEnvelope(doc, ...legal(), senderSig()), "bad-signature");
  });

  test("a disclosure not in the manifest is refused", () => {
    const doc = structuredClone(V.body);
    doc.disclosures.push(env.makeDisclosure(new Uint8Array(16), "request", {
      recipient: agency("legal").id, services: ["legal"], urgency: "emergency", case_ref: null,
    }));
    code(() => env.openEnvelope(doc, ...legal(), senderSig()), "undisclosed-digest");
  });

  test("a swapped ciphertext fails its hash", () => {
    const doc = structuredClone(V.body);
    const [a, b] = Object.keys(doc.ciphertexts) as [string, string];
    [doc.ciphertexts[a], doc.ciphertexts[b]] = [doc.ciphertexts[b], doc.ciphertexts[a]];
    code(() => env.openEnvelope(doc, ...legal(), senderSig()), "hash-mismatch");
  });

  test("a rewritten status fails its signature", () => {
    const s = V.status;
    const recipient = byId(s.inputs.recipient);
    code(() => env.verifyStatus({ ...s.body, status: "rejected", recipient: s.inputs.recipient },
      s.inputs.referral_id, fromHex(agency(recipient).sig_public_hex)), "bad-signature");
  });

  test("a duplicate key in a disclosure is refused", () => {
    const dup = b64urlEncode(utf8(`["${b64urlEncode(new Uint8Array(16))}","request",{"recipient":"x","recipient":"y"}]`));
    code(() => env.parseDisclosure(dup), "bad-disclosure");
  });
});
