/**
 * The console's one HTTP client: same origin only (relative URLs; the CSP's
 * connect-src 'self' enforces it), an access token obtained by
 * private_key_jwt signed in the page and kept in memory, and errors turned
 * into plain words (what happened, what to do).
 */
import { clientAssertion, tokenForm } from "./crypto/assertion";

export class ApiError extends Error {
  override name = "ApiError";
  constructor(readonly status: number, readonly type: string | null, message: string) {
    super(message);
  }
}

export type Fetch = typeof fetch;

/** Plain words for a problem+json answer (RFC 9457) or an OAuth error. */
async function problem(response: Response): Promise<ApiError> {
  let body: Record<string, unknown> = {};
  try {
    body = (await response.json()) as Record<string, unknown>;
  } catch {
    // not JSON: the status alone speaks
  }
  const detail = typeof body.detail === "string" ? body.detail
    : typeof body.error_description === "string" ? body.error_description : "";
  const type = typeof body.type === "string" ? body.type : typeof body.error === "string" ? body.error : null;
  const s = response.status;
  const what = s === 401 ? "The server did not accept this key file's sign-in."
    : s === 403 ? "Your agency's role does not allow this."
    : s === 404 ? "This item does not exist, or it is no longer shared with your agency."
    : s === 409 ? "Someone changed this at the same time."
    : s === 422 ? "The server refused this request."
    : s === 429 ? "Too many requests in a short time."
    : s >= 500 ? "The server had a problem."
    : "The request failed.";
  const todo = s === 401 ? "Check that this is your agency's current key file, or ask your administrator."
    : s === 409 ? "Reload and try again."
    : s === 429 ? "Wait a minute, then try again."
    : s >= 500 ? "Try again in a few minutes; if it persists, call your administrator."
    : s === 422 ? "Correct what is described and try again."
    : "";
  return new ApiError(s, type, [what, detail, todo].filter(Boolean).join(" "));
}

export class Api {
  private token: { value: string; expires: number } | null = null;

  constructor(
    private readonly clientId: string,
    private readonly authSeed: Uint8Array,
    private readonly fetcher: Fetch = (...a) => fetch(...a),
  ) {}

  private async accessToken(): Promise<string> {
    const now = Date.now() / 1000;
    if (this.token && this.token.expires - 30 > now) return this.token.value;
    const audience = `${location.origin}/oauth/token`;
    const response = await this.fetcher("/oauth/token", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
      body: tokenForm(clientAssertion(this.clientId, this.authSeed, audience)),
      credentials: "omit",
      cache: "no-store",
    });
    if (!response.ok) throw await problem(response);
    const body = (await response.json()) as { access_token: string; expires_in: number };
    this.token = { value: body.access_token, expires: now + body.expires_in };
    return body.access_token;
  }

  /** One authenticated request; JSON in and out, or the answer's text for text/plain. */
  async request(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Response> {
    if (!path.startsWith("/")) throw new Error("the console only talks to its own server");
    const send = async (): Promise<Response> => this.fetcher(path, {
      method,
      headers: {
        authorization: `Bearer ${await this.accessToken()}`,
        accept: "application/json",
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? null : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
    let response = await send();
    if (response.status === 401) {
      this.token = null;
      response = await send();
    }
    if (!response.ok) throw await problem(response);
    return response;
  }

  async get<T>(path: string, params: Record<string, string | null | undefined> = {}): Promise<T> {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v) query.set(k, v);
    const qs = query.toString();
    return (await (await this.request("GET", qs ? `${path}?${qs}` : path)).json()) as T;
  }

  async text(path: string): Promise<string> {
    return (await this.request("GET", path)).text();
  }

  async post<T>(path: string, body: unknown, headers: Record<string, string> = {}): Promise<T> {
    return (await (await this.request("POST", path, body, headers)).json()) as T;
  }

  /** Forget the access token (Lock). */
  forget(): void {
    this.token = null;
  }
}
