// Reading a JWT's lifetime and deciding when to renew it, without trusting the local clock.

/** Lifetime of a JWT, read from its (unverified) payload; `undefined` when it has no `exp`. */
export interface TokenLifetime {
  /** `exp`, in ms since the epoch (the issuer's clock). */
  expiresAt: number;
  /** `iat`, in ms since the epoch (the issuer's clock), when present. */
  issuedAt: number | undefined;
}

export function tokenLifetime(token: string): TokenLifetime | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const json = decodeBase64Url(part);
    const claims: unknown = JSON.parse(json);
    if (typeof claims !== "object" || claims === null) return undefined;
    const { exp, iat } = claims as { exp?: unknown; iat?: unknown };
    if (typeof exp !== "number") return undefined;
    return { expiresAt: exp * 1000, issuedAt: typeof iat === "number" ? iat * 1000 : undefined };
  } catch {
    return undefined;
  }
}

/**
 * How long a token stays valid, counted from when the client received it, in ms.
 *
 * With `iat` this is `exp − iat`: both are the issuer's clock, so the local clock does not
 * matter (a browser 10 minutes ahead or behind gets the same answer). Without `iat` the only
 * reference is the local clock (`exp − now`); mint tokens with `iat` to avoid that.
 */
export function tokenValidity(lifetime: TokenLifetime, now: number = Date.now()): number {
  if (lifetime.issuedAt !== undefined) return Math.max(0, lifetime.expiresAt - lifetime.issuedAt);
  return Math.max(0, lifetime.expiresAt - now);
}

/**
 * How long after receiving a token to refresh it: a quarter of its validity before it runs
 * out, but at most 60 s and at least 1 s before, and never before half of it has passed.
 * Measured with timers from the moment of receipt, never against `Date.now()` (see
 * `tokenValidity`).
 */
export function refreshDelay(lifetime: TokenLifetime, now: number = Date.now()): number {
  const validity = tokenValidity(lifetime, now);
  const margin = Math.min(60_000, Math.max(1_000, validity / 4));
  return Math.max(validity / 2, validity - margin);
}

function decodeBase64Url(s: string): string {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(s.length / 4) * 4, "=");
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}
