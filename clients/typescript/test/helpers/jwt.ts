import { createHmac } from "node:crypto";

const b64url = (s: string | Buffer) => Buffer.from(s).toString("base64url");

/** An HS256 token like `herald token` mints (`sub`, `iat`, `exp`, `roles`). */
export function mintToken(secret: string, sub: string, roles: string[], ttlSeconds: number): string {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims: Record<string, unknown> = { sub, iat: now, exp: now + ttlSeconds };
  if (roles.length > 0) claims["roles"] = roles;
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}
