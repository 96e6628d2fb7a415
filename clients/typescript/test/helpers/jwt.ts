// Mints HS256 tokens for the tests, like `herald token` does.
import { createHmac } from "node:crypto";

const b64url = (s: string | Buffer) => Buffer.from(s).toString("base64url");

/**
 * The real wall clock, captured before any test can skew `Date.now` (the clock tests move the
 * client's clock, never the gateway's or the token issuer's).
 */
export const realNow: () => number = Date.now.bind(Date);

export interface MintOptions {
  /** Leave `iat` out (a token that does not say when it was issued). */
  noIat?: boolean;
}

/** An HS256 token like `herald token` mints (`sub`, `iat`, `exp`, `roles`). */
export function mintToken(secret: string, sub: string, roles: string[], ttlSeconds: number, opts: MintOptions = {}): string {
  const now = Math.floor(realNow() / 1000);
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims: Record<string, unknown> = opts.noIat ? { sub, exp: now + ttlSeconds } : { sub, iat: now, exp: now + ttlSeconds };
  if (roles.length > 0) claims["roles"] = roles;
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}
