/**
 * private_key_jwt client assertions (RFC 7523) signed in the page with the
 * client's Ed25519 key, as app/client/assertion.py builds them: JWS compact
 * serialization, `alg` EdDSA, iss = sub = client_id, aud = the token endpoint,
 * a single-use `jti`, `exp` at most 60 seconds ahead.
 */
import { b64urlEncode, utf8 } from "./encoding";
import { sign } from "./keys";

export const ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

export function clientAssertion(
  clientId: string, authSeed: Uint8Array, audience: string, now: number = Math.floor(Date.now() / 1000),
  lifetime = 60,
): string {
  const header = { alg: "EdDSA", typ: "JWT" };
  const claims = {
    iss: clientId, sub: clientId, aud: audience, iat: now, exp: now + lifetime, jti: crypto.randomUUID(),
  };
  const input = `${b64urlEncode(utf8(JSON.stringify(header)))}.${b64urlEncode(utf8(JSON.stringify(claims)))}`;
  return `${input}.${b64urlEncode(sign(authSeed, utf8(input)))}`;
}

/** The form body of a client-credentials token request. */
export function tokenForm(assertion: string): URLSearchParams {
  return new URLSearchParams({
    grant_type: "client_credentials",
    client_assertion_type: ASSERTION_TYPE,
    client_assertion: assertion,
  });
}
