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

/**
 * Now as an RFC 7519 NumericDate to the millisecond. Whole seconds would make a token minted
 * with `ttlSeconds: 1` live anywhere from 0 to 1 s (exp = floor(now) + 1), and a test that
 * needs the token alive for its first steps would race its expiry; the gateway reads the
 * fraction (herald-core identity.rs), so the lifetime is exactly the one asked for.
 */
export function nowNumericDate(): number {
  return Math.round(realNow()) / 1000;
}

/** An HS256 token like `herald token` mints (`sub`, `iat`, `exp`, `roles`), `exp` exactly `ttlSeconds` after `iat`. */
export function mintToken(secret: string, sub: string, roles: string[], ttlSeconds: number, opts: MintOptions = {}): string {
  const now = nowNumericDate();
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims: Record<string, unknown> = opts.noIat ? { sub, exp: now + ttlSeconds } : { sub, iat: now, exp: now + ttlSeconds };
  if (roles.length > 0) claims["roles"] = roles;
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}
