/**
 * RFC 8785 (JCS) bytes, from the `canonicalize` package (the reference
 * implementation by one of the RFC's authors), and strict JSON parsing that
 * refuses duplicate object keys, as app/crypto/envelope/ does for
 * disclosures and decrypted fields (JSON.parse alone keeps the last one).
 */
import canonicalize from "canonicalize";
import { utf8 } from "./encoding";

export class CanonicalizationError extends Error {
  override name = "CanonicalizationError";
}

/** The RFC 8785 bytes of a JSON value; throws for what has no canonical form. */
export function canonicalJson(value: unknown): Uint8Array {
  let text: string | undefined;
  try {
    text = canonicalize(value);
  } catch (exc) {
    throw new CanonicalizationError(`not canonicalizable JSON: ${(exc as Error).message}`);
  }
  if (text === undefined) throw new CanonicalizationError("not a JSON value");
  return utf8(text);
}

/**
 * JSON.parse, after checking that no object in `text` repeats a key (keys
 * compared after unescaping). Throws SyntaxError for bad JSON or a repeated key.
 */
export function parseJsonStrict(text: string): unknown {
  const value: unknown = JSON.parse(text);
  const stack: { keys: Set<string>; expectKey: boolean }[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    const top = stack[stack.length - 1];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (top?.expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (top.keys.has(key)) throw new SyntaxError(`duplicate key ${JSON.stringify(key)}`);
        top.keys.add(key);
        top.expectKey = false;
      }
      i = j;
    } else if (c === "{") {
      stack.push({ keys: new Set(), expectKey: true });
    } else if (c === "[") {
      stack.push({ keys: new Set(), expectKey: false });
    } else if (c === "}" || c === "]") {
      stack.pop();
    } else if (c === "," && top && top.keys.size > 0) {
      top.expectKey = true;
    }
  }
  return value;
}
