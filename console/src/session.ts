/**
 * The unlocked session: private keys held in memory only (never in
 * localStorage, sessionStorage, IndexedDB or cookies), forgotten by "Lock",
 * by closing the tab and by reloading the page.
 */
import type { Api } from "./api";
import type { AgencySecrets, KeyFileSettings } from "./crypto/keyfile";
import { lib } from "./crypto/sodium";
import type { Trust } from "./trust";

export interface Session {
  agencyId: string;
  clientId: string;
  role: string | null;
  agencyName: string;
  secrets: AgencySecrets;
  encPublic: Uint8Array;
  api: Api;
  trust: Trust;
  settings: KeyFileSettings;
  maxConsentDays: number;
}

let current: Session | null = null;

export function session(): Session {
  if (!current) throw new Error("locked");
  return current;
}

export function isUnlocked(): boolean {
  return current !== null;
}

export function start(s: Session): void {
  current = s;
}

/** Forget every key: overwrite the bytes, drop the token and the session. */
export function lock(): void {
  if (!current) return;
  const s = lib();
  s.memzero(current.secrets.encPrivate);
  s.memzero(current.secrets.sigSeed);
  s.memzero(current.secrets.authSeed);
  current.api.forget();
  current = null;
}
