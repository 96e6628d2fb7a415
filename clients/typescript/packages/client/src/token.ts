/** Lifetime of a JWT, read from its (unverified) payload; `undefined` when it has no `exp`. */
export interface TokenLifetime {
  /** `exp`, in ms since the epoch. */
  expiresAt: number;
  /** `iat`, in ms since the epoch, when present. */
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
 * When to refresh: a quarter of the lifetime before `exp`, but at most 60 s and at least 1 s
 * before it (never negative).
 */
export function refreshDelay(lifetime: TokenLifetime, now: number): number {
  const total = lifetime.expiresAt - (lifetime.issuedAt ?? now);
  const margin = Math.min(60_000, Math.max(1_000, total / 4));
  return Math.max(0, lifetime.expiresAt - margin - now);
}

function decodeBase64Url(s: string): string {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(s.length / 4) * 4, "=");
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}
