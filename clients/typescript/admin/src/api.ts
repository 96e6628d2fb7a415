// The admin API (`/admin/api/*`, crates/herald-server/src/admin): every call but sign-in
// carries the session's CSRF token; a 401 means the session ended and the page signs out.

export interface ErrorBody {
  code: string;
  message: string;
  pointer?: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorBody,
  ) {
    super(body.message);
  }
}

export interface SessionInfo {
  user: string;
  csrf: string;
  node: string;
  idle_timeout_ms: number;
}

let csrf = "";
let onSignedOut: () => void = () => {};

/** Remembers the session's CSRF token (from sign-in or the session probe). */
export function setSession(info: SessionInfo | null): void {
  csrf = info?.csrf ?? "";
}

/** Called when a call answers 401: the session is gone (idle, lifetime, sign-out elsewhere). */
export function whenSignedOut(f: () => void): void {
  onSignedOut = f;
}

async function call<T>(method: string, path: string, body?: unknown, background = false): Promise<T> {
  const headers: Record<string, string> = { "x-csrf-token": csrf };
  if (body !== undefined) headers["content-type"] = "application/json";
  // Refreshes the page makes by itself do not count as use (the idle timeout).
  if (background) headers["x-herald-admin-background"] = "1";
  const res = await fetch(path, { method, headers, body: body === undefined ? null : JSON.stringify(body), credentials: "same-origin" });
  if (res.status === 204) return undefined as T;
  const json = (await res.json().catch(() => ({}))) as { error?: ErrorBody } & T;
  if (!res.ok) {
    if (res.status === 401 && !path.endsWith("/login")) onSignedOut();
    throw new ApiError(res.status, json.error ?? { code: "internal", message: `HTTP ${res.status}` });
  }
  return json;
}

export const api = {
  get: <T>(path: string, background = false) => call<T>("GET", path, undefined, background),
  post: <T>(path: string, body?: unknown) => call<T>("POST", path, body),
};

export const enc = encodeURIComponent;

/** Signs in; resolves with the session (the cookie is set by the answer). */
export async function signIn(user: string, password: string): Promise<SessionInfo> {
  const info = await api.post<SessionInfo>("/admin/api/login", { user, password });
  setSession(info);
  return info;
}

/** The current session, or null when signed out. */
export async function probeSession(): Promise<SessionInfo | null> {
  const res = await fetch("/admin/api/session", { credentials: "same-origin" });
  if (!res.ok) return null;
  const info = (await res.json()) as SessionInfo;
  setSession(info);
  return info;
}
