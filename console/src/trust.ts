/**
 * What the console trusts, checked like the SDK and `refgate audit verify`:
 * the audit log's verifier key (pinned in this browser per key file, public
 * data only), every checkpoint it meets (signature, witness quorum,
 * consistency with the pinned checkpoint, which then advances), and every
 * agency key it encrypts to or checks a signature with (key transparency).
 *
 * Agency keys: when the checkpoint carries a `directory` line, the agency's
 * directory proof (./crypto/directory) decides its current kids; otherwise
 * the key's own registration event and inclusion proof (the API on main).
 */
import type { Api } from "./api";
import { ApiError } from "./api";
import type { Checkpoint } from "./crypto/checkpoint";
import { CheckpointError, directoryLine, openCheckpoint, parseVerifierKey } from "./crypto/checkpoint";
import { canonicalJson } from "./crypto/canonical";
import type { Witness } from "./crypto/cosignature";
import { parseWitnessKey, validCosigners } from "./crypto/cosignature";
import { verifyDirectoryProof } from "./crypto/directory";
import { b64Decode, b64Encode, b64urlDecode, equalBytes } from "./crypto/encoding";
import { kid as kidOf, KEY_SIZE } from "./crypto/keys";
import { leafHash, verifyConsistency, verifyInclusion } from "./crypto/merkle";

export class TrustError extends Error {
  override name = "TrustError";
}

export interface Pin {
  log_key: string;
  size: number | null; // null: re-pinned on purpose, no checkpoint seen with this key yet
  root: string | null; // standard base64
  witnesses?: string[]; // the task force's witness verifier keys (public)
  quorum?: number; // how many of them must have cosigned every accepted checkpoint
}

/** What the settings view changes: the log key, the witnesses and the quorum (public data only). */
export interface TrustSettings {
  logKey: string;
  witnesses: string[];
  quorum: number;
}

const KEY_EVENTS = new Set(["key:register", "key:rotate"]);
const RE_PIN = "To re-pin on purpose (only when your task force tells you the log key changed), " +
  "sign in with \"Forget the pinned log key\" ticked.";

export interface AgencyEntry {
  id: string;
  name: string;
  kind: string;
  status: string;
  keys: { kid: string; use: string; public_key: string; status: string }[];
}

export class Trust {
  /** True when no log key was given or pinned and the server's was taken (trust on first use). */
  firstUse = false;
  private logKey = "";
  private seen: Checkpoint | null = null;
  private witnessKeys: string[] = [];
  private witnesses: Witness[] = [];
  private quorum = 0;
  private readonly keys = new Map<string, Uint8Array>();
  private readonly agencies = new Map<string, AgencyEntry>();

  constructor(
    private readonly api: Api,
    private readonly storageKey: string,
    /** How long to wait for the witnesses to cosign a first checkpoint (they lag a little). */
    private readonly cosignTimeoutMs = 20_000,
  ) {}

  get pinnedKey(): string {
    return this.logKey;
  }

  /** The log key, witness keys and quorum in force (shown and edited by the settings view). */
  get settings(): TrustSettings {
    return { logKey: this.logKey, witnesses: [...this.witnessKeys], quorum: this.quorum };
  }

  /** The newest checkpoint this browser verified, if any. */
  get checkpoint(): Checkpoint | null {
    return this.seen;
  }

  /**
   * Pin on purpose, like `refgate configure --log-key K --witness V… --quorum N`:
   * check every key and the quorum, forget the pinned checkpoint when the log key
   * changes, then verify the server's latest checkpoint under the new settings.
   * Nothing is stored unless that checkpoint passes.
   */
  async configure(next: TrustSettings): Promise<Checkpoint> {
    const logKey = next.logKey.trim();
    try {
      parseVerifierKey(logKey);
    } catch (exc) {
      throw new TrustError(`The log key is not a log verifier key (${(exc as Error).message}). Copy it again from your task force's notice.`);
    }
    const keys = [...new Set(next.witnesses.map((w) => w.trim()).filter(Boolean))];
    const parsed = keys.map((w, i) => {
      try {
        return parseWitnessKey(w);
      } catch (exc) {
        throw new TrustError(`Witness key ${i + 1} is not a witness verifier key (${(exc as Error).message}). Copy it again from your task force's notice.`);
      }
    });
    if (!Number.isInteger(next.quorum) || next.quorum < 0) throw new TrustError("The quorum is a whole number, 0 or more.");
    if (next.quorum > parsed.length) {
      throw new TrustError(`A quorum of ${next.quorum} needs at least as many witness keys (${parsed.length} given). Add witness keys or lower the quorum.`);
    }
    const before = { logKey: this.logKey, seen: this.seen, keys: this.witnessKeys, witnesses: this.witnesses, quorum: this.quorum };
    const stored = localStorage.getItem(this.storageKey);
    if (logKey !== this.logKey) this.seen = null;
    this.logKey = logKey;
    this.witnessKeys = keys;
    this.witnesses = parsed;
    this.quorum = next.quorum;
    try {
      const cp = await this.latest();
      this.firstUse = false;
      this.keys.clear();
      return cp;
    } catch (exc) {
      Object.assign(this, { logKey: before.logKey, seen: before.seen, witnessKeys: before.keys, witnesses: before.witnesses, quorum: before.quorum });
      if (stored === null) localStorage.removeItem(this.storageKey);
      else localStorage.setItem(this.storageKey, stored);
      throw exc;
    }
  }

  private loadPin(): Pin | null {
    const text = localStorage.getItem(this.storageKey);
    if (!text) return null;
    try {
      const pin = JSON.parse(text) as Pin;
      parseVerifierKey(pin.log_key);
      const witnesses = pin.witnesses ?? [];
      const quorum = pin.quorum ?? 0;
      if (!Array.isArray(witnesses) || !Number.isInteger(quorum) || quorum < 0 || quorum > witnesses.length) throw new Error("quorum");
      this.witnesses = witnesses.map(parseWitnessKey);
      this.witnessKeys = witnesses;
      this.quorum = quorum;
      return pin;
    } catch {
      throw new TrustError("The log key pinned in this browser is damaged. " + RE_PIN);
    }
  }

  private savePin(cp: Checkpoint): void {
    const pin: Pin = {
      log_key: this.logKey, size: cp.size, root: b64Encode(cp.root), witnesses: this.witnessKeys, quorum: this.quorum,
    };
    localStorage.setItem(this.storageKey, JSON.stringify(pin));
  }

  /** Resolve the log key (given > pinned > the server's on first use) and check the latest checkpoint. */
  async init(given: string | null, forget: boolean): Promise<Checkpoint> {
    if (forget) localStorage.removeItem(this.storageKey);
    const pin = this.loadPin();
    if (given) {
      try {
        parseVerifierKey(given);
      } catch (exc) {
        throw new TrustError(`The log key you entered is not a log verifier key (${(exc as Error).message}). Copy it again from your task force's notice.`);
      }
      if (pin && pin.log_key !== given) {
        throw new TrustError(`The log key you entered differs from the one pinned in this browser (${pin.log_key}). ${RE_PIN}`);
      }
      this.logKey = given;
    } else if (pin) {
      this.logKey = pin.log_key;
    } else {
      this.logKey = (await this.api.text("/v1/audit/log-key")).trim();
      try {
        parseVerifierKey(this.logKey);
      } catch {
        throw new TrustError("The server's log key is malformed. Call your task-force administrator.");
      }
      this.firstUse = true;
    }
    if (pin && pin.log_key === this.logKey && pin.size !== null && pin.root !== null) {
      this.seen = { origin: "", size: pin.size, root: b64Decode(pin.root, 32), note: "", text: "", extensions: [], signatures: [] };
    }
    return this.latest();
  }

  /**
   * The server's newest checkpoint, verified and checked against the pin. With
   * a quorum, the newest one with that many cosignatures
   * (`?cosigned=K`, DESIGN.md "Witnesses"), waiting a little for the witnesses.
   */
  async latest(): Promise<Checkpoint> {
    if (this.quorum <= 0) return this.observe(await this.api.text("/v1/audit/checkpoint"));
    const deadline = Date.now() + this.cosignTimeoutMs;
    for (;;) {
      try {
        return this.observe(await this.api.text(`/v1/audit/checkpoint?cosigned=${this.quorum}`));
      } catch (exc) {
        if (!(exc instanceof ApiError && (exc.status === 404 || exc.status === 503))) throw exc;
        if (Date.now() >= deadline) {
          throw new TrustError(`The server has no audit-log checkpoint cosigned by ${this.quorum} of the witnesses your task force configured. Either the witnesses are not reachable, or the server is showing this browser a log they have not seen. Do not send referrals; call your task-force administrator.`);
        }
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  /** Verify a checkpoint note: signature, witnesses, consistency with the newest one seen; advance the pin. */
  async observe(note: string): Promise<Checkpoint> {
    let cp: Checkpoint;
    try {
      cp = openCheckpoint(note, this.logKey);
    } catch (exc) {
      if (exc instanceof CheckpointError) {
        throw new TrustError(`The audit log's checkpoint does not verify with the pinned log key: ${exc.message}. Do not send referrals; call your task-force administrator.`);
      }
      throw exc;
    }
    const cosigners = validCosigners(cp, this.witnesses);
    if (cosigners.length < this.quorum) {
      throw new TrustError(`The audit log's checkpoint (size ${cp.size}) is cosigned by ${cosigners.length} of the witnesses your task force configured, and ${this.quorum} are required: the server may be showing this browser a log the witnesses have not seen. Do not send referrals; call your task-force administrator.`);
    }
    const seen = this.seen;
    if (seen) {
      if (cp.size < seen.size) {
        throw new TrustError(`The server shows an older audit log (size ${cp.size}) than this browser already saw (size ${seen.size}): entries may have been removed. Do not send referrals; call your task-force administrator.`);
      }
      if (cp.size === seen.size && !equalBytes(cp.root, seen.root)) {
        throw new TrustError(`The server shows a different audit log than before at the same size ${cp.size} (expected root ${b64Encode(seen.root)}): the log was rewritten or forked. Do not send referrals; call your task-force administrator. ${RE_PIN}`);
      }
      if (cp.size > seen.size) {
        const proof = await this.api.get<{ hashes: string[] }>("/v1/audit/proof/consistency",
          { first: String(seen.size), second: String(cp.size) });
        let hashes: Uint8Array[];
        try {
          hashes = proof.hashes.map((h) => b64Decode(h, 32));
        } catch {
          throw new TrustError("The server sent a malformed consistency proof. Try again; if it persists, call your administrator.");
        }
        if (!verifyConsistency(seen.size, cp.size, hashes, seen.root, cp.root)) {
          throw new TrustError(`The audit log at size ${cp.size} does not extend the one this browser saw at size ${seen.size} (root ${b64Encode(seen.root)}): it was rewritten. Do not send referrals; call your task-force administrator. ${RE_PIN}`);
        }
      }
    }
    if (!seen || cp.size >= seen.size) {
      this.seen = cp;
      this.savePin(cp);
    }
    return cp;
  }

  // ------------------------------------------------------------ agencies

  async agency(id: string): Promise<AgencyEntry> {
    let entry = this.agencies.get(id);
    if (!entry) {
      entry = await this.api.get<AgencyEntry>(`/v1/agencies/${encodeURIComponent(id)}`);
      if (entry.id !== id) throw new TrustError(`The directory answered for another agency than ${id}.`);
      this.agencies.set(id, entry);
    }
    return entry;
  }

  async allAgencies(): Promise<AgencyEntry[]> {
    const out: AgencyEntry[] = [];
    let cursor: string | null = null;
    do {
      const page: { items: AgencyEntry[]; next_cursor: string | null } =
        await this.api.get("/v1/agencies", { limit: "500", cursor });
      out.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor);
    for (const a of out) if (!this.agencies.has(a.id)) this.agencies.set(a.id, a);
    return out;
  }

  async name(id: string): Promise<string> {
    try {
      return (await this.agency(id)).name;
    } catch {
      return `agency ${id.slice(0, 8)}`;
    }
  }

  /** An agency's current key for `use`, verified against the audit log; [kid, raw public key]. */
  async agencyKey(agencyId: string, use: "enc" | "sig"): Promise<[string, Uint8Array]> {
    const entry = await this.agency(agencyId);
    const who = `${entry.name}'s ${use === "enc" ? "encryption" : "signing"} key`;
    const current = entry.keys.filter((k) => k.use === use && k.status === "current");
    if (current.length !== 1) throw new TrustError(`The directory does not show one current ${who}.`);
    const served = current[0] as AgencyEntry["keys"][number];
    let pub: Uint8Array;
    try {
      pub = b64urlDecode(served.public_key, KEY_SIZE);
    } catch {
      throw new TrustError(`The directory's copy of ${who} is malformed.`);
    }
    const kid = kidOf(pub);
    if (served.kid !== kid) throw new TrustError(`The directory's copy of ${who} does not match its key id.`);
    const cacheKey = `${agencyId}|${use}|${kid}`;
    if (!this.keys.has(cacheKey)) {
      await this.verifyLogged(agencyId, use, kid, who);
      this.keys.set(cacheKey, pub);
    }
    return [kid, pub];
  }

  private async verifyLogged(agencyId: string, use: "enc" | "sig", kid: string, who: string): Promise<void> {
    const cp = await this.latest();
    const directory = directoryLine(cp);
    if (directory) {
      const proof = await this.api.get<unknown>(`/v1/agencies/${agencyId}/keys/proof`, { tree_size: String(cp.size) });
      let leaf;
      try {
        leaf = verifyDirectoryProof(proof, agencyId, directory);
      } catch (exc) {
        throw new TrustError(`${who} could not be checked against the signed directory: ${(exc as Error).message}. Do not send; call your administrator.`);
      }
      if (leaf.status !== "active") throw new TrustError(`The signed directory says ${who.replace(/'s .*/, "")} is ${leaf.status}: it cannot receive referrals.`);
      if ((use === "enc" ? leaf.enc_kid : leaf.sig_kid) !== kid) {
        throw new TrustError(`The server serves another ${who} than the signed directory states: it may have been swapped. Nothing was encrypted to it. Call your administrator.`);
      }
      return;
    }
    const proof = await this.keyProof(agencyId, kid, who);
    const pcp = await this.observe(String(proof.checkpoint));
    const event = proof.event as Record<string, unknown>;
    const detail = event?.detail as Record<string, unknown> | undefined;
    let ok = false;
    try {
      const leaf = leafHash(canonicalJson(event));
      const served = b64Decode(proof.leaf_hash, 32);
      const inclusion = proof.proof as { index: number; tree_size: number; hashes: string[] };
      ok = equalBytes(leaf, served)
        && KEY_EVENTS.has(String(event.action)) && event.outcome === "ok" && event.resource_type === "key"
        && event.resource_id === kid && detail?.agency === agencyId && detail?.use === use && detail?.kid === kid
        && inclusion.index === proof.seq && inclusion.tree_size === pcp.size
        && verifyInclusion(leaf, proof.seq as number, pcp.size, inclusion.hashes.map((h) => b64Decode(h, 32)), pcp.root);
    } catch {
      ok = false;
    }
    if (!ok) {
      throw new TrustError(`${who} is not the one the audit log registered: it may have been swapped. Nothing was encrypted to it. Call your administrator.`);
    }
  }

  private async keyProof(agencyId: string, kid: string, who: string): Promise<Record<string, unknown>> {
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        return await this.api.get<Record<string, unknown>>(`/v1/agencies/${agencyId}/keys/${kid}/proof`);
      } catch (exc) {
        if (exc instanceof ApiError && (exc.status === 409 || exc.status === 503) && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 500));
          continue;
        }
        throw new TrustError(`${who} has no proof in the audit log yet (${(exc as Error).message}). Try again in a minute.`);
      }
    }
  }
}
