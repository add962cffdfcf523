/**
 * Open a sealed key file in a Web Worker (./worker/unseal.ts): Argon2id runs
 * off the main thread, and the page shows how long it has been working. The
 * worker's hashed file name is fixed at build time (build.mjs defines
 * UNLOCK_WORKER), so it is served from 'self' like every other asset.
 */
import type { AgencySecrets, ParsedKeyFile } from "./crypto/keyfile";
import { KeyFileError, secretsFromUnsealed } from "./crypto/keyfile";
import type { UnsealReply, UnsealRequest } from "./worker/unseal";

declare const UNLOCK_WORKER: string;

/** Unseal in the worker; `tick(seconds)` is called every second while it works. */
export function unsealInWorker(parsed: ParsedKeyFile, passphrase: Uint8Array, tick: (seconds: number) => void): Promise<AgencySecrets> {
  if (parsed.plain) return Promise.resolve(parsed.plain);
  const worker = new Worker(new URL(UNLOCK_WORKER, location.href), { type: "module", name: "refgate-unseal" });
  const started = Date.now();
  const timer = setInterval(() => tick(Math.round((Date.now() - started) / 1000)), 1000);
  return new Promise<AgencySecrets>((resolve, reject) => {
    const done = (): void => {
      clearInterval(timer);
      worker.terminate();
    };
    worker.onmessage = (ev: MessageEvent<UnsealReply>) => {
      done();
      const reply = ev.data;
      if (!reply.ok) {
        reject(new KeyFileError(reply.passphrase ? `cannot open the key file: ${reply.message}` : reply.message));
        return;
      }
      try {
        resolve(secretsFromUnsealed(reply.inner));
      } catch (exc) {
        reject(exc);
      } finally {
        reply.inner.fill(0);
      }
    };
    worker.onerror = (ev: ErrorEvent) => {
      done();
      ev.preventDefault();
      reject(new Error("This browser could not start the key file's decryption (its worker failed to load). Reload the page and try again; if it persists, use a current Chrome, Edge, Firefox or Safari."));
    };
    const message: UnsealRequest = { sealed: parsed.sealed, passphrase };
    worker.postMessage(message, [passphrase.buffer]);
  });
}
