/**
 * Envelope v2 for the browser: a port of app/crypto/envelope/ (DESIGN.md,
 * "Envelope v2"; bytes fixed by tests/vectors/README.md).
 *
 * The sender builds with {@link sealEnvelope} and {@link amend}; a recipient
 * (or the sender) opens with {@link openEnvelope}, which verifies the
 * signature, every digest, hash, kid and key commitment before it decrypts
 * anything, and returns every field or none. Statuses are signed by the
 * recipient ({@link signStatus}, {@link verifyStatus}) and notes sealed to the
 * sender ({@link sealNote}, {@link openNote}). Every failure is an
 * {@link EnvelopeError} with the same `code` as Python's.
 */
import { canonicalJson, CanonicalizationError, parseJsonStrict } from "./canonical";
import {
  b64urlDecode, b64urlEncode, concat, EncodingError, equalBytes, fromUtf8, utf8,
} from "./encoding";
import * as keys from "./keys";
import { lib } from "./sodium";
import * as wire from "./wire";
import type { FieldValue, GrantValue, Manifest, RequestValue } from "./wire";

export type ErrorCode =
  | "malformed" | "bad-signature" | "kid-mismatch" | "bad-disclosure" | "undisclosed-digest"
  | "duplicate-disclosure" | "field-mismatch" | "consent-mismatch" | "hash-mismatch"
  | "missing-sender-copy" | "missing-request" | "missing-grant" | "invalid-consent"
  | "bad-padding" | "too-many-fields" | "too-many-recipients" | "field-too-large"
  | "manifest-changed" | "bad-commitment" | "decrypt-failed" | "invalid-field";

export class EnvelopeError extends Error {
  override name = "EnvelopeError";
  constructor(readonly code: ErrorCode, message: string) {
    super(`${code}: ${message}`);
  }
}

export const VERSION = 2;
const NONCE_SIZE = 24;
const TAG_SIZE = 16;
const FIELD_KEY_SIZE = 32;
const HASH_SIZE = 32;
const SALT_SIZE = 16;
const FID_SIZE = 16;
const PAD_TO = 8;
const AAD_PREFIX = "refgate/v2|";
const COMMIT_PREFIX = "refgate/v2/commit|";
const MANIFEST_PREFIX = utf8("refgate/v2/manifest\n");
const STATUS_PREFIX = utf8("refgate/v2/status\n");

export type RandomSource = (n: number) => Uint8Array;
export type DisclosureType = "field" | "grant" | "request";

function aad(referralId: string, fid: string): Uint8Array {
  return utf8(AAD_PREFIX + referralId + "|" + fid);
}

/** BLAKE2b-256 keyed with the field key over `refgate/v2/commit|<referral>|<fid>`. */
export function commitment(fieldKey: Uint8Array, referralId: string, fid: string): Uint8Array {
  return lib().crypto_generichash(HASH_SIZE, utf8(COMMIT_PREFIX + referralId + "|" + fid), fieldKey);
}

function canonical(value: unknown): Uint8Array {
  try {
    return canonicalJson(value);
  } catch (exc) {
    if (exc instanceof CanonicalizationError) throw new EnvelopeError("malformed", exc.message);
    throw exc;
  }
}

function shape<T>(parse: (v: unknown) => T, value: unknown, code: ErrorCode = "malformed"): T {
  try {
    return parse(value);
  } catch (exc) {
    if (exc instanceof wire.ShapeError) throw new EnvelopeError(code, exc.message);
    throw exc;
  }
}

// ------------------------------------------------------------------ disclosures

/** base64url of the RFC 8785 bytes of `[base64url(salt), kind, value]`. */
export function makeDisclosure(salt: Uint8Array, kind: DisclosureType, value: object): string {
  return b64urlEncode(canonical([b64urlEncode(salt), kind, value]));
}

/** base64url(SHA-256(the ASCII bytes of the disclosure string)). */
export function disclosureDigest(disclosure: string): string {
  return b64urlEncode(keys.sha256(utf8(disclosure)));
}

export interface Disclosed {
  disclosure: string;
  digest: string;
  kind: DisclosureType;
  value: FieldValue | GrantValue | RequestValue;
}

const VALUE_PARSERS = {
  field: wire.fieldValue,
  grant: wire.grantValue,
  request: wire.requestValue,
} as const;

/** Decode and validate one disclosure; throws `bad-disclosure`. */
export function parseDisclosure(disclosure: unknown): Disclosed {
  if (typeof disclosure !== "string") {
    throw new EnvelopeError("bad-disclosure", "a disclosure must be a base64url string");
  }
  let array: unknown;
  try {
    array = parseJsonStrict(fromUtf8(b64urlDecode(disclosure)));
  } catch {
    throw new EnvelopeError("bad-disclosure", "a disclosure is not base64url of a JSON array");
  }
  if (!Array.isArray(array) || array.length !== 3) {
    throw new EnvelopeError("bad-disclosure", "a disclosure must be [salt, type, value]");
  }
  const [salt, kind, value] = array as [unknown, unknown, unknown];
  try {
    b64urlDecode(salt, SALT_SIZE);
  } catch {
    throw new EnvelopeError("bad-disclosure", "a disclosure's salt must be base64url of 16 bytes");
  }
  if (kind !== "field" && kind !== "grant" && kind !== "request") {
    throw new EnvelopeError("bad-disclosure", "a disclosure's type must be field, grant or request");
  }
  const parse: (v: unknown) => FieldValue | GrantValue | RequestValue = VALUE_PARSERS[kind];
  const parsed = shape(parse, value, "bad-disclosure");
  return { disclosure, digest: disclosureDigest(disclosure), kind, value: parsed };
}

// ------------------------------------------------------------------ manifest

/** `refgate/v2/manifest\n` + the RFC 8785 bytes of the manifest. */
export function manifestSigningInput(manifest: Manifest): Uint8Array {
  return concat(MANIFEST_PREFIX, canonical(manifest));
}

function verifyManifest(manifest: Manifest, signature: unknown, sigPublic: Uint8Array): void {
  if (manifest.sender_kid !== keys.kid(sigPublic)) {
    throw new EnvelopeError("kid-mismatch", "manifest.sender_kid is not the kid of the sender's signing key");
  }
  let raw: Uint8Array;
  try {
    raw = b64urlDecode(signature, keys.SIGNATURE_SIZE);
  } catch {
    throw new EnvelopeError("malformed", "signature must be base64url of 64 bytes");
  }
  if (!keys.verify(sigPublic, manifestSigningInput(manifest), raw)) {
    throw new EnvelopeError("bad-signature", "the manifest signature does not verify");
  }
}

function padded(digests: Iterable<string>, random: RandomSource): string[] {
  const out = new Set(digests);
  while (out.size < PAD_TO || out.size % PAD_TO) out.add(b64urlEncode(random(HASH_SIZE)));
  return [...out].sort(byCodePoint);
}

function byCodePoint(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// ------------------------------------------------------------------ sets of disclosures

class DisclosureSet {
  fields = new Map<string, Disclosed>();
  grants = new Map<string, Disclosed>(); // `${fid}|${recipient}` ->
  requests = new Map<string, Disclosed>();

  add(d: Disclosed): void {
    if (d.kind === "field") {
      const v = d.value as FieldValue;
      this.put(this.fields, v.fid, d, `field ${v.fid}`);
    } else if (d.kind === "grant") {
      const v = d.value as GrantValue;
      this.put(this.grants, `${v.fid}|${v.recipient}`, d, `grant of field ${v.fid} to ${v.recipient}`);
    } else {
      const v = d.value as RequestValue;
      this.put(this.requests, v.recipient, d, `request to ${v.recipient}`);
    }
  }

  private put(where: Map<string, Disclosed>, key: string, d: Disclosed, what: string): void {
    if (where.has(key)) throw new EnvelopeError("duplicate-disclosure", `two disclosures for the ${what}`);
    where.set(key, d);
  }
}

function disclosed(disclosures: unknown[], digests: Set<string>, seen: Iterable<string> = []): Disclosed[] {
  const taken = new Set(seen);
  return disclosures.map((item) => {
    const d = parseDisclosure(item);
    if (!digests.has(d.digest)) {
      throw new EnvelopeError("undisclosed-digest", "a disclosure's digest is not in manifest.digests");
    }
    if (taken.has(d.digest)) throw new EnvelopeError("duplicate-disclosure", "two disclosures share a digest");
    taken.add(d.digest);
    return d;
  });
}

// ------------------------------------------------------------------ sending

/** A survivor's consent: release field `field` (a name) to `recipient`. */
export interface Grant {
  field: string;
  recipient: string;
  encPublic: Uint8Array;
  purpose: string;
  expiresAt: string;
  releaseRef?: string | null;
}

/** What one recipient is asked to do. */
export interface Request {
  recipient: string;
  services: string[];
  urgency: string;
  caseRef?: string | null;
}

export interface EnvelopeBody {
  manifest: Manifest;
  signature: string;
  disclosures: string[];
  ciphertexts: Record<string, string>;
  wrapped_keys: wire.WrappedKey[];
}

export interface Sealed {
  body: EnvelopeBody;
  fids: Record<string, string>; // field name -> fid
}

function wrap(
  random: RandomSource, fid: string, recipient: string, publicKey: Uint8Array, fieldKey: Uint8Array,
  purpose: string, expiresAt: string | null, releaseRef: string | null,
): [string, wire.WrappedKey] {
  let kid: string;
  let wrapped: Uint8Array;
  try {
    kid = keys.kid(publicKey);
    wrapped = keys.seal(publicKey, fieldKey);
  } catch (exc) {
    throw new EnvelopeError("malformed", `the key of ${recipient}: ${(exc as Error).message}`);
  }
  const disclosure = makeDisclosure(random(SALT_SIZE), "grant", {
    fid, recipient, kid,
    wrapped_key_sha256: b64urlEncode(keys.sha256(wrapped)),
    purpose, expires_at: expiresAt, release_ref: releaseRef,
  });
  return [disclosure, { fid, recipient, kid, wrapped_key: b64urlEncode(wrapped) }];
}

function requestDisclosure(random: RandomSource, r: Request): string {
  return makeDisclosure(random(SALT_SIZE), "request", {
    recipient: r.recipient, services: [...r.services], urgency: r.urgency, case_ref: r.caseRef ?? null,
  });
}

function fieldPlaintext(name: string, value: string): Uint8Array {
  if (typeof name !== "string" || !wire.FIELD_NAME_RE.test(name)) {
    throw new EnvelopeError("invalid-field", `field name ${JSON.stringify(String(name).slice(0, 40))} must match ${wire.FIELD_NAME_RE.source}`);
  }
  if (typeof value !== "string") throw new EnvelopeError("invalid-field", `value of ${name} must be a string`);
  return canonical({ name, value });
}

function checkRecipients(grants: Grant[], requests: Request[], sender: string): void {
  const granted = new Set(grants.map((g) => g.recipient));
  const requested = new Set<string>();
  for (const r of requests) {
    if (r.recipient === sender) throw new EnvelopeError("malformed", "the sender does not address a request to itself");
    if (requested.has(r.recipient)) throw new EnvelopeError("duplicate-disclosure", `two requests to ${r.recipient}`);
    requested.add(r.recipient);
    if (!granted.has(r.recipient)) {
      throw new EnvelopeError("missing-grant", `recipient ${r.recipient} has a request but no grant: it would receive nothing`);
    }
  }
  for (const g of grants) {
    if (g.recipient === sender) throw new EnvelopeError("invalid-consent", "the sender's own copies are added automatically");
    if (!requested.has(g.recipient)) throw new EnvelopeError("missing-request", `recipient ${g.recipient} has grants but no request`);
  }
}

/**
 * Encrypt `fields` (name -> value, in order) and return the `POST /v1/referrals`
 * body. Each field gets a fresh fid, key and nonce; its key is wrapped for the
 * sender and for every grant naming it, and for nobody else. `unsafeRandom`
 * replaces the CSPRNG for fids, salts, keys, nonces and decoys (test vectors
 * only; sealed boxes stay random).
 */
export function sealEnvelope(args: {
  referralId: string;
  senderAgency: string;
  senderSigSeed: Uint8Array;
  senderEncPublic: Uint8Array;
  fields: [string, string][];
  grants: Grant[];
  requests: Request[];
  createdAt: string;
  unsafeRandom?: RandomSource;
}): Sealed {
  const random = args.unsafeRandom ?? keys.randomBytes;
  const { referralId, senderAgency } = args;
  if (args.fields.length === 0) throw new EnvelopeError("malformed", "a referral needs at least one field");
  const names = new Set(args.fields.map(([n]) => n));
  if (names.size !== args.fields.length) throw new EnvelopeError("invalid-field", "two fields have the same name");
  for (const g of args.grants) {
    if (!names.has(g.field)) throw new EnvelopeError("field-mismatch", `consent names unknown field ${g.field}`);
  }
  if (args.requests.length === 0) throw new EnvelopeError("missing-request", "a referral needs at least one recipient");
  checkRecipients(args.grants, args.requests, senderAgency);
  const fids: Record<string, string> = {};
  const disclosures: string[] = [];
  const ciphertexts: Record<string, string> = {};
  const wrappedKeys: wire.WrappedKey[] = [];
  for (const [name, value] of args.fields) {
    const plaintext = fieldPlaintext(name, value);
    const fid = b64urlEncode(random(FID_SIZE));
    fids[name] = fid;
    const fieldKey = random(FIELD_KEY_SIZE);
    const nonce = random(NONCE_SIZE);
    const ct = lib().crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad(referralId, fid), null, nonce, fieldKey);
    const blob = concat(nonce, ct);
    ciphertexts[fid] = b64urlEncode(blob);
    disclosures.push(makeDisclosure(random(SALT_SIZE), "field", {
      fid,
      ciphertext_sha256: b64urlEncode(keys.sha256(blob)),
      commitment: b64urlEncode(commitment(fieldKey, referralId, fid)),
    }));
    const copies: [string, Uint8Array, string, string | null, string | null][] = [
      [senderAgency, args.senderEncPublic, wire.SENDER_PURPOSE, null, null],
      ...args.grants.filter((g) => g.field === name).map(
        (g): [string, Uint8Array, string, string | null, string | null] =>
          [g.recipient, g.encPublic, g.purpose, g.expiresAt, g.releaseRef ?? null],
      ),
    ];
    for (const [recipient, pub, purpose, expires, ref] of copies) {
      const [d, entry] = wrap(random, fid, recipient, pub, fieldKey, purpose, expires, ref);
      disclosures.push(d);
      wrappedKeys.push(entry);
    }
    lib().memzero(fieldKey);
  }
  for (const r of args.requests) disclosures.push(requestDisclosure(random, r));
  const sigPublic = keys.sigPublicFromSeed(args.senderSigSeed);
  const manifest: Manifest = {
    v: 2,
    referral_id: referralId,
    sender_agency: senderAgency,
    sender_kid: keys.kid(sigPublic),
    created_at: args.createdAt,
    version: 1,
    digests: padded(disclosures.map(disclosureDigest), random),
  };
  shape(wire.manifest, manifest);
  const signature = b64urlEncode(keys.sign(args.senderSigSeed, manifestSigningInput(manifest)));
  return { body: { manifest, signature, disclosures, ciphertexts, wrapped_keys: wrappedKeys }, fids };
}

// ------------------------------------------------------------------ opening

export interface Opened {
  manifest: Manifest;
  fields: Record<string, string>; // name -> value
  fids: Record<string, string>; // name -> fid
  grants: GrantValue[];
  requests: Record<string, RequestValue>;
  fieldKeys: Record<string, Uint8Array>; // fid -> key (only while needed, e.g. to amend)
}

/**
 * Verify and decrypt a `GET /v1/referrals/{id}` answer for `agencyId`, in the
 * order of app/crypto/envelope/opening.py's open_envelope; returns everything or throws.
 */
export function openEnvelope(
  document: unknown, agencyId: string, encPrivate: Uint8Array, senderSigPublic: Uint8Array,
): Opened {
  if (typeof document !== "object" || document === null || Array.isArray(document)) {
    throw new EnvelopeError("malformed", "the referral must be a JSON object");
  }
  const doc = document as Record<string, unknown>;
  for (const member of ["manifest", "signature", "disclosures", "wrapped_keys"]) {
    if (!(member in doc)) throw new EnvelopeError("malformed", `the referral has no ${member}`);
  }
  const manifest = shape(wire.manifest, doc.manifest);
  if (typeof doc.signature !== "string") throw new EnvelopeError("malformed", "signature must be a string");
  verifyManifest(manifest, doc.signature, senderSigPublic);
  if (!Array.isArray(doc.disclosures)) throw new EnvelopeError("malformed", "disclosures must be a list");
  const s = new DisclosureSet();
  for (const d of disclosed(doc.disclosures, new Set(manifest.digests))) s.add(d);
  const ciphertexts = doc.ciphertexts ?? {};
  if (typeof ciphertexts !== "object" || ciphertexts === null || Array.isArray(ciphertexts)) {
    throw new EnvelopeError("malformed", "ciphertexts must be an object");
  }
  if (!Array.isArray(doc.wrapped_keys)) throw new EnvelopeError("malformed", "wrapped_keys must be a list");
  const ownKid = keys.kid(keys.encPublicFromPrivate(encPrivate));
  const fields: Record<string, string> = {};
  const fids: Record<string, string> = {};
  const fieldKeys: Record<string, Uint8Array> = {};
  for (const item of doc.wrapped_keys) {
    const w = shape(wire.wrappedKey, item);
    if (w.recipient !== agencyId) continue;
    const fieldKey = unwrap(w, s, manifest, encPrivate, ownKid);
    const [name, value] = decryptField(w.fid, (ciphertexts as Record<string, unknown>)[w.fid], s, manifest, fieldKey);
    if (name in fields) throw new EnvelopeError("invalid-field", `two fields are named ${name}`);
    fields[name] = value;
    fids[name] = w.fid;
    fieldKeys[w.fid] = fieldKey;
  }
  const requests: Record<string, RequestValue> = {};
  for (const [r, d] of s.requests) requests[r] = d.value as RequestValue;
  return {
    manifest, fields, fids,
    grants: [...s.grants.values()].map((d) => d.value as GrantValue),
    requests, fieldKeys,
  };
}

function unwrap(
  w: wire.WrappedKey, s: DisclosureSet, manifest: Manifest, encPrivate: Uint8Array, ownKid: string,
): Uint8Array {
  const where = `wrapped key of field ${w.fid}`;
  const d = s.grants.get(`${w.fid}|${w.recipient}`);
  if (!d) throw new EnvelopeError("consent-mismatch", `${where} has no grant disclosure`);
  const g = d.value as GrantValue;
  const data = b64urlDecode(w.wrapped_key);
  if (g.kid !== w.kid) throw new EnvelopeError("consent-mismatch", `${where}: kid differs from its grant`);
  if (!equalBytes(keys.sha256(data), b64urlDecode(g.wrapped_key_sha256))) {
    throw new EnvelopeError("hash-mismatch", `${where}: sha256 differs from its grant`);
  }
  if (w.kid !== ownKid) throw new EnvelopeError("kid-mismatch", `${where} is for another encryption key`);
  let fieldKey: Uint8Array;
  try {
    fieldKey = keys.unseal(encPrivate, data);
  } catch {
    throw new EnvelopeError("decrypt-failed", `${where} does not open`);
  }
  const fd = s.fields.get(w.fid);
  if (!fd) throw new EnvelopeError("field-mismatch", `field ${w.fid} has no field disclosure`);
  const expected = b64urlDecode((fd.value as FieldValue).commitment);
  if (fieldKey.length !== FIELD_KEY_SIZE || !equalBytes(commitment(fieldKey, manifest.referral_id, w.fid), expected)) {
    throw new EnvelopeError("bad-commitment", `${where} does not carry the committed field key`);
  }
  return fieldKey;
}

function decryptField(
  fid: string, text: unknown, s: DisclosureSet, manifest: Manifest, fieldKey: Uint8Array,
): [string, string] {
  if (typeof text !== "string") throw new EnvelopeError("field-mismatch", `the ciphertext of field ${fid} is missing`);
  const fd = s.fields.get(fid) as Disclosed;
  let blob: Uint8Array;
  try {
    blob = b64urlDecode(text);
  } catch {
    throw new EnvelopeError("malformed", `ciphertext of field ${fid} is not base64url`);
  }
  if (blob.length < NONCE_SIZE + TAG_SIZE) {
    throw new EnvelopeError("malformed", `ciphertext of field ${fid} is shorter than nonce and tag`);
  }
  if (!equalBytes(keys.sha256(blob), b64urlDecode((fd.value as FieldValue).ciphertext_sha256))) {
    throw new EnvelopeError("hash-mismatch", `ciphertext of field ${fid} differs from its hash`);
  }
  let plaintext: Uint8Array;
  try {
    plaintext = lib().crypto_aead_xchacha20poly1305_ietf_decrypt(
      null, blob.subarray(NONCE_SIZE), aad(manifest.referral_id, fid), blob.subarray(0, NONCE_SIZE), fieldKey,
    );
  } catch {
    throw new EnvelopeError("decrypt-failed", `field ${fid} does not decrypt`);
  }
  let value: unknown;
  try {
    value = parseJsonStrict(fromUtf8(plaintext));
  } catch {
    throw new EnvelopeError("invalid-field", `field ${fid} is not JSON`);
  }
  const v = value as Record<string, unknown>;
  if (
    typeof v !== "object" || v === null || Array.isArray(v)
    || Object.keys(v).sort().join(",") !== "name,value"
    || typeof v.name !== "string" || !wire.FIELD_NAME_RE.test(v.name)
    || typeof v.value !== "string"
  ) {
    throw new EnvelopeError("invalid-field", `field ${fid} is not {"name", "value"} with a valid name`);
  }
  return [v.name, v.value];
}

// ------------------------------------------------------------------ amendments

/**
 * Widen consent: the `POST /v1/referrals/{id}/grants` body. The referral as
 * stored is opened first as its sender (signature, digests, hashes,
 * commitments), so a server that altered it gets no key wrapped for anyone.
 */
export function amend(args: {
  document: unknown;
  senderAgency: string;
  senderSigSeed: Uint8Array;
  senderEncPrivate: Uint8Array;
  grants: Grant[];
  requests: Request[];
  unsafeRandom?: RandomSource;
}): { manifest: Manifest; signature: string; disclosures: string[]; wrapped_keys: wire.WrappedKey[] } {
  const random = args.unsafeRandom ?? keys.randomBytes;
  const sigPublic = keys.sigPublicFromSeed(args.senderSigSeed);
  const opened = openEnvelope(args.document, args.senderAgency, args.senderEncPrivate, sigPublic);
  if (opened.manifest.sender_agency !== args.senderAgency) {
    throw new EnvelopeError("malformed", "this referral was sent by another agency");
  }
  if (args.grants.length === 0) throw new EnvelopeError("malformed", "no consent to add");
  const disclosures: string[] = [];
  const wrappedKeys: wire.WrappedKey[] = [];
  for (const g of args.grants) {
    const fid = opened.fids[g.field];
    if (fid === undefined) throw new EnvelopeError("field-mismatch", `the referral has no field ${g.field}`);
    const [d, entry] = wrap(random, fid, g.recipient, g.encPublic, opened.fieldKeys[fid] as Uint8Array,
      g.purpose, g.expiresAt, g.releaseRef ?? null);
    disclosures.push(d);
    wrappedKeys.push(entry);
  }
  for (const r of args.requests) disclosures.push(requestDisclosure(random, r));
  for (const k of Object.values(opened.fieldKeys)) lib().memzero(k);
  const old = opened.manifest;
  const manifest: Manifest = {
    ...old,
    version: old.version + 1,
    digests: padded([...old.digests, ...disclosures.map(disclosureDigest)], random),
  };
  const signature = b64urlEncode(keys.sign(args.senderSigSeed, manifestSigningInput(manifest)));
  return { manifest, signature, disclosures, wrapped_keys: wrappedKeys };
}

// ------------------------------------------------------------------ statuses and notes

export interface StatusFields {
  referralId: string;
  recipient: string;
  status: string;
  reason: string | null;
  noteSha256: string | null;
  signedAt: string;
}

/** `refgate/v2/status\n` + the RFC 8785 bytes of the signed status object. */
export function statusSigningInput(f: StatusFields): Uint8Array {
  return concat(STATUS_PREFIX, canonical({
    referral_id: f.referralId, recipient: f.recipient, status: f.status,
    reason: f.reason, note_sha256: f.noteSha256, signed_at: f.signedAt,
  }));
}

/** base64url SHA-256 of a sealed note's bytes, or null. */
export function noteSha256(note: string | null): string | null {
  if (note === null) return null;
  try {
    return b64urlEncode(keys.sha256(b64urlDecode(note)));
  } catch {
    throw new EnvelopeError("malformed", "note must be base64url of a sealed box");
  }
}

export interface StatusBody {
  status: string;
  reason: string | null;
  note: string | null;
  signed_at: string;
  signature: string;
}

/** The `POST /v1/referrals/{id}/status` body, signed by the recipient. */
export function signStatus(args: {
  referralId: string; recipient: string; status: string; reason: string | null;
  note: string | null; signedAt: string; sigSeed: Uint8Array;
}): StatusBody {
  const message = statusSigningInput({
    referralId: args.referralId, recipient: args.recipient, status: args.status,
    reason: args.reason, noteSha256: noteSha256(args.note), signedAt: args.signedAt,
  });
  return {
    status: args.status, reason: args.reason, note: args.note, signed_at: args.signedAt,
    signature: b64urlEncode(keys.sign(args.sigSeed, message)),
  };
}

/** Return only if a status item is signed by `sigPublic`; throws `bad-signature` otherwise. */
export function verifyStatus(item: Record<string, unknown>, referralId: string, sigPublic: Uint8Array): void {
  const bad = (): EnvelopeError => new EnvelopeError("bad-signature", "the status signature does not verify");
  const { signature, signed_at: signedAt, recipient, status, reason, note } = item;
  if (typeof signature !== "string" || typeof signedAt !== "string") {
    throw new EnvelopeError("bad-signature", "the status is not signed");
  }
  if (
    !wire.RFC3339_RE.test(signedAt) || typeof recipient !== "string" || !wire.UUID_RE.test(recipient)
    || typeof status !== "string" || !(wire.TASK_STATUSES as readonly string[]).includes(status)
    || !(reason === null || reason === undefined || (typeof reason === "string" && wire.REASON_RE.test(reason)))
    || !(note === null || note === undefined || typeof note === "string")
  ) {
    throw bad();
  }
  let noteHash: string | null;
  let raw: Uint8Array;
  try {
    noteHash = noteSha256((note as string | null | undefined) ?? null);
    raw = b64urlDecode(signature, keys.SIGNATURE_SIZE);
  } catch {
    throw bad();
  }
  const message = statusSigningInput({
    referralId, recipient, status, reason: (reason as string | null | undefined) ?? null,
    noteSha256: noteHash, signedAt,
  });
  if (!keys.verify(sigPublic, message, raw)) throw bad();
}

/** Seal a status note to the sender's X25519 key; returns base64url. */
export function sealNote(text: string, senderEncPublic: Uint8Array): string {
  return b64urlEncode(keys.seal(senderEncPublic, utf8(text)));
}

/** Open a note sealed by {@link sealNote}; throws `decrypt-failed` otherwise. */
export function openNote(note: string, encPrivate: Uint8Array): string {
  let data: Uint8Array;
  try {
    data = b64urlDecode(note);
  } catch (exc) {
    if (exc instanceof EncodingError) throw new EnvelopeError("malformed", "note is not base64url");
    throw exc;
  }
  try {
    return fromUtf8(keys.unseal(encPrivate, data));
  } catch {
    throw new EnvelopeError("decrypt-failed", "note does not open with this key");
  }
}
