/**
 * The one place libsodium is loaded. Every primitive the console uses comes
 * from libsodium-wrappers-sumo (WebAssembly; the page's CSP allows it with
 * 'wasm-unsafe-eval' and nothing else): no primitive is written by hand.
 */
import sodium from "libsodium-wrappers-sumo";

export type Sodium = typeof sodium;

let loaded: Promise<Sodium> | null = null;

/** Resolve once libsodium is ready; call before any function of this directory. */
export function ready(): Promise<Sodium> {
  loaded ??= sodium.ready.then(() => sodium);
  return loaded;
}

/** The loaded library; throws if {@link ready} has not resolved yet. */
export function lib(): Sodium {
  if (!sodium.crypto_hash_sha256) {
    throw new Error("libsodium is not loaded yet: await ready() first");
  }
  return sodium;
}
