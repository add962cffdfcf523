/**
 * The Web Worker that runs Argon2id (a sealed key file's passphrase KDF) off
 * the page's main thread, so the page stays responsive and shows progress
 * while 256 MiB of memory-hard hashing runs. Served from 'self' as a hashed
 * asset under the page's own CSP (script-src 'self' 'wasm-unsafe-eval').
 *
 * One message in: {sealed, passphrase}; one message out: {ok: true, inner}
 * (the sealed plaintext, transferred, never copied) or {ok: false, passphrase,
 * message}. The passphrase buffer is wiped here once used; the page
 * terminates the worker after the answer, which frees its memory.
 */
import { openWithPassphrase, PassphraseError } from "../crypto/passphrase";
import { ready } from "../crypto/sodium";

export interface UnsealRequest {
  sealed: unknown;
  passphrase: Uint8Array;
}

export type UnsealReply = { ok: true; inner: Uint8Array } | { ok: false; passphrase: boolean; message: string };

const scope = self as unknown as {
  onmessage: ((ev: MessageEvent<UnsealRequest>) => void) | null;
  postMessage: (message: UnsealReply, transfer?: Transferable[]) => void;
};

scope.onmessage = (ev) => {
  void (async () => {
    const { sealed, passphrase } = ev.data;
    try {
      await ready();
      const inner = openWithPassphrase(sealed, passphrase);
      scope.postMessage({ ok: true, inner }, [inner.buffer]);
    } catch (exc) {
      scope.postMessage({ ok: false, passphrase: exc instanceof PassphraseError, message: (exc as Error).message });
    } finally {
      passphrase.fill(0);
    }
  })();
};
