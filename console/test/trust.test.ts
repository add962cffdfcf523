// The console's trust checks against a server that lies (the operator): the
// fetcher below is the gateway as an operator could run it, serving its own
// log key, an older log, a forked log or a bad consistency proof. Each lie
// must be refused, and the pin in localStorage must not move.
import assert from "node:assert/strict";
import { before, beforeEach, describe, test } from "node:test";
import { Api } from "../src/api";
import { keyHash } from "../src/crypto/checkpoint";
import { b64Encode, concat, utf8 } from "../src/crypto/encoding";
import { sigPublicFromSeed, sign } from "../src/crypto/keys";
import { leafHash, rootFromLeafHashes } from "../src/crypto/merkle";
import { ready } from "../src/crypto/sodium";
import { Trust, TrustError } from "../src/trust";

const store = new Map<string, string>();
Object.assign(globalThis, {
  location: { origin: "http://gateway.test" },
  localStorage: {
    getItem: (k: string) => store.get(k) ?? null,
    setItem: (k: string, v: string) => void store.set(k, v),
    removeItem: (k: string) => void store.delete(k),
  },
});

before(async () => {
  await ready();
});

const NAME = "gateway.test/log";
const seed = (n: number) => new Uint8Array(32).fill(n);

function vkey(s: Uint8Array): string {
  const pub = sigPublicFromSeed(s);
  return `${NAME}+${Buffer.from(keyHash(NAME, 1, pub)).toString("hex")}+${b64Encode(concat(Uint8Array.of(1), pub))}`;
}

function note(size: number, root: Uint8Array, s: Uint8Array): string {
  const text = `${NAME}\n${size}\n${b64Encode(root)}\n`;
  const sig = concat(keyHash(NAME, 1, sigPublicFromSeed(s)), sign(s, utf8(text)));
  return `${text}\n\u2014 ${NAME} ${b64Encode(sig)}\n`;
}

const leaves = (tag: string, n: number) => Array.from({ length: n }, (_, i) => leafHash(utf8(`${tag}${i}`)));

/** RFC 9162 2.1.4.1 SUBPROOF, written out for the test. */
function subproof(m: number, d: Uint8Array[], b: boolean): Uint8Array[] {
  const n = d.length;
  if (m === n) return b ? [] : [rootFromLeafHashes(d)];
  let k = 1;
  while (k * 2 < n) k *= 2;
  return m <= k
    ? [...subproof(m, d.slice(0, k), b), rootFromLeafHashes(d.slice(k))]
    : [...subproof(m - k, d.slice(k), false), rootFromLeafHashes(d.slice(0, k))];
}

/** The gateway: serves `state.note`, and consistency proofs over `state.leaves` (or `state.proof`). */
const state: { key: string; note: string; leaves: Uint8Array[]; proof?: string[] } = { key: "", note: "", leaves: [] };
const fetcher = (async (input: string) => {
  const url = new URL(input, "http://gateway.test");
  const json = (v: unknown) => new Response(JSON.stringify(v), { headers: { "content-type": "application/json" } });
  if (url.pathname === "/oauth/token") return json({ access_token: "t", expires_in: 300 });
  if (url.pathname === "/v1/audit/log-key") return new Response(state.key);
  if (url.pathname === "/v1/audit/checkpoint") return new Response(state.note);
  if (url.pathname === "/v1/audit/proof/consistency") {
    const first = Number(url.searchParams.get("first"));
    const second = Number(url.searchParams.get("second"));
    return json({ first, second, hashes: state.proof ?? subproof(first, state.leaves.slice(0, second), true).map(b64Encode) });
  }
  return new Response("{}", { status: 404 });
}) as unknown as typeof fetch;

function serve(tag: string, size: number, s = seed(1)): void {
  state.leaves = leaves(tag, size);
  state.note = note(size, rootFromLeafHashes(state.leaves), s);
  state.proof = undefined;
}

const trust = () => new Trust(new Api("client", seed(9), fetcher), "refgate.pin.test");

describe("log pinning in the console", () => {
  beforeEach(() => {
    store.clear();
    state.key = vkey(seed(1));
    serve("a", 5);
  });

  test("first use pins the server's key and checkpoint, and says so", async () => {
    const t = trust();
    const cp = await t.init(null, false);
    assert.equal(cp.size, 5);
    assert.ok(t.firstUse);
    assert.equal(JSON.parse(store.get("refgate.pin.test") as string).size, 5);
    assert.equal(JSON.parse(store.get("refgate.pin.test") as string).log_key, vkey(seed(1)));
  });

  test("a grown log with a valid consistency proof advances the pin", async () => {
    await trust().init(null, false);
    serve("a", 11);
    const t = trust();
    await t.init(null, false);
    assert.ok(!t.firstUse);
    assert.equal(JSON.parse(store.get("refgate.pin.test") as string).size, 11);
  });

  const refused = async (lie: () => void, pattern: RegExp) => {
    await trust().init(null, false);
    const before = store.get("refgate.pin.test");
    lie();
    await assert.rejects(trust().init(null, false), (e: unknown) => e instanceof TrustError && pattern.test(e.message));
    assert.equal(store.get("refgate.pin.test"), before, "the pin did not move");
  };

  test("a server that swaps its log key is refused", () =>
    refused(() => { state.key = vkey(seed(2)); serve("a", 6, seed(2)); }, /does not verify with the pinned log key/));

  test("a rolled-back log is refused", () => refused(() => serve("a", 3), /older audit log/));

  test("a forked log at the same size is refused", () => refused(() => serve("b", 5), /different audit log/));

  test("a rewritten history with a bad consistency proof is refused", () =>
    refused(() => serve("b", 9), /does not extend/));

  test("a bogus consistency proof is refused", () =>
    refused(() => { serve("a", 9); state.proof = [b64Encode(new Uint8Array(32))]; }, /does not extend/));

  test("a log key given at sign-in that differs from the pin is refused, and can be re-pinned on purpose", async () => {
    await trust().init(null, false);
    await assert.rejects(trust().init(vkey(seed(3)), false), /differs from the one pinned/);
    state.key = vkey(seed(3));
    serve("c", 2, seed(3));
    const t = trust();
    await t.init(vkey(seed(3)), true);
    assert.equal(JSON.parse(store.get("refgate.pin.test") as string).log_key, vkey(seed(3)));
  });
});

// ------------------------------------------------------------------ witnesses

const WITNESS = "witness.test/w1";

function witnessVkey(s: Uint8Array, name = WITNESS): string {
  const pub = sigPublicFromSeed(s);
  return `${name}+${Buffer.from(keyHash(name, 4, pub)).toString("hex")}+${b64Encode(concat(Uint8Array.of(4), pub))}`;
}

/** A C2SP tlog-cosignature/v1 line by the witness `s` (as `name`) on `signed`. */
function cosign(signed: string, s: Uint8Array, name = WITNESS, time = 1_700_000_000n): string {
  const text = signed.slice(0, signed.indexOf("\n\n") + 1);
  const stamp = new Uint8Array(8);
  new DataView(stamp.buffer).setBigUint64(0, time);
  const sig = sign(s, concat(utf8(`cosignature/v1\ntime ${time}\n`), utf8(text)));
  return `\u2014 ${name} ${b64Encode(concat(keyHash(name, 4, sigPublicFromSeed(s)), stamp, sig))}\n`;
}

describe("witness quorum in the console", () => {
  const w1 = seed(21);
  const w2 = seed(22);
  const asked: string[] = [];
  let cosigned: number; // how many cosignatures the served note has (the server's own claim)
  const witnessed = (async (input: string, init?: RequestInit) => {
    const url = new URL(input, "http://gateway.test");
    if (url.pathname === "/v1/audit/checkpoint") {
      asked.push(url.search);
      const want = Number(url.searchParams.get("cosigned") ?? "0");
      if (want > cosigned) {
        return new Response(JSON.stringify({ status: 404, title: "Not Found", detail: "no checkpoint with that many cosignatures" }),
          { status: 404, headers: { "content-type": "application/problem+json" } });
      }
    }
    return fetcher(input, init);
  }) as unknown as typeof fetch;
  const wtrust = () => new Trust(new Api("client", seed(9), witnessed), "refgate.pin.test", 300);
  const settings = (quorum: number, ...keys: string[]) => ({ logKey: vkey(seed(1)), witnesses: keys, quorum });

  beforeEach(() => {
    store.clear();
    asked.length = 0;
    state.key = vkey(seed(1));
    serve("a", 5);
    state.note += cosign(state.note, w1);
    cosigned = 1;
  });

  test("configured witnesses are pinned, asked for with ?cosigned=K and their cosignatures verified", async () => {
    const t = wtrust();
    await t.init(vkey(seed(1)), false);
    const cp = await t.configure(settings(1, witnessVkey(w1), witnessVkey(w2)));
    assert.equal(cp.size, 5);
    const pin = JSON.parse(store.get("refgate.pin.test") as string);
    assert.deepEqual(pin.witnesses, [witnessVkey(w1), witnessVkey(w2)]);
    assert.equal(pin.quorum, 1);
    // a later sign-in takes the witnesses from the pin and asks for the quorum
    asked.length = 0;
    const again = wtrust();
    await again.init(null, false);
    assert.deepEqual(asked, ["?cosigned=1"]);
    assert.deepEqual(again.settings.witnesses, [witnessVkey(w1), witnessVkey(w2)]);
  });

  test("a checkpoint without the quorum is refused in plain words, even when the server claims it", async () => {
    const t = wtrust();
    await t.init(vkey(seed(1)), false);
    await t.configure(settings(1, witnessVkey(w1), witnessVkey(w2)));
    const before = store.get("refgate.pin.test");
    // the operator answers ?cosigned=2 with a note carrying one real and one forged cosignature
    serve("a", 8);
    state.note += cosign(state.note, w1) + cosign(state.note, seed(66), "witness.test/w2");
    cosigned = 2;
    await assert.rejects(t.configure(settings(2, witnessVkey(w1), witnessVkey(w2))),
      (e: unknown) => e instanceof TrustError && /cosigned by 1 of the witnesses your task force configured, and 2 are required/.test(e.message));
    assert.equal(store.get("refgate.pin.test"), before, "nothing was saved");
    assert.equal(t.settings.quorum, 1, "the settings in force did not change");
    // a split view: the server shows a tree no witness cosigned, ignoring ?cosigned
    serve("a", 9);
    cosigned = 5;
    await assert.rejects(wtrust().init(null, false), /cosigned by 0 of the witnesses .* 1 are required/);
  });

  test("no checkpoint with the quorum within the wait is refused, saying what to do", async () => {
    const t = wtrust();
    await t.init(vkey(seed(1)), false);
    await t.configure(settings(1, witnessVkey(w1)));
    cosigned = 0; // the witnesses stopped cosigning (or the server hides their cosignatures)
    await assert.rejects(wtrust().init(null, false),
      /no audit-log checkpoint cosigned by 1 of the witnesses .* call your task-force administrator/);
  });

  test("bad witness keys and an impossible quorum are refused before anything is asked or stored", async () => {
    const t = wtrust();
    await t.init(vkey(seed(1)), false);
    const before = store.get("refgate.pin.test");
    asked.length = 0;
    await assert.rejects(t.configure(settings(2, witnessVkey(w1))), /quorum of 2 needs at least as many witness keys \(1 given\)/);
    await assert.rejects(t.configure(settings(1, vkey(seed(2)))), /Witness key 1 is not a witness verifier key/);
    await assert.rejects(t.configure(settings(1, witnessVkey(w1).replace(/\+[0-9a-f]{8}\+/, "+00000000+"))), /Witness key 1/);
    await assert.rejects(t.configure({ logKey: "nonsense", witnesses: [], quorum: 0 }), /not a log verifier key/);
    assert.deepEqual(asked, []);
    assert.equal(store.get("refgate.pin.test"), before);
  });

  test("a new log key set on purpose forgets the old checkpoint; the witnesses carry the quorum", async () => {
    const t = wtrust();
    await t.init(vkey(seed(1)), false);
    state.key = vkey(seed(3));
    serve("z", 2, seed(3));
    state.note += cosign(state.note, w1);
    const cp = await t.configure({ logKey: vkey(seed(3)), witnesses: [witnessVkey(w1)], quorum: 1 });
    assert.equal(cp.size, 2);
    assert.equal(JSON.parse(store.get("refgate.pin.test") as string).log_key, vkey(seed(3)));
  });
});
