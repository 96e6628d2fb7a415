// The seam between the `Herald` connection logic and a wire: what every transport (WebSocket,
// SSE) must provide and report. A transport carries protocol v1 frames and nothing else;
// reconnect, recovery, requests and token refresh live in `Herald`, once for all transports.
import type { ClientFrame, ErrorBody } from "./protocol.js";

export type TransportName = "websocket" | "sse";

/** The gateway's HTTP refusal of a connection (before any frame): 401, 403, 429, 503. */
export interface Refusal extends ErrorBody {
  status: number;
}

/** How a transport ended. */
export interface TransportClose {
  code: number;
  reason: string;
  /** False when the transport never opened (connection failed or refused). */
  opened: boolean;
  /** Set when the gateway refused the credentials or the origin; learned over HTTP. */
  refusal?: Refusal;
}

/** What a transport reports; each callback only while the transport is current. */
export interface TransportEvents {
  /** The wire is up; the `welcome` frame follows. */
  open(): void;
  /** One server frame (protocol v1 JSON text). */
  message(text: string): void;
  /** A keep-alive that carries no frame (an SSE comment): proof the server is there. */
  alive(): void;
  /** Exactly once, whatever ended it (including `abort`). */
  close(info: TransportClose): void;
}

/** One connection over one wire. Created open-ing; `close` is reported exactly once. */
export interface Transport {
  readonly name: TransportName;
  /** Sends one client frame; dropped silently when the wire cannot take it (it is closing). */
  send(frame: ClientFrame): void;
  /** Closes at once and reports `close` synchronously (does not wait for the peer). */
  abort(code: number, reason: string): void;
}

/** What `Herald` gives a transport to open with. */
export interface TransportOptions {
  /** The current credentials (changes after a token refresh); `undefined` for anonymous. */
  token: () => string | undefined;
  events: TransportEvents;
}

/** `Authorization` header for a token (none when anonymous). */
export function authHeaders(token: string | undefined): Record<string, string> {
  return token === undefined ? {} : { authorization: `Bearer ${token}` };
}

/** Reads a refusal from an HTTP error response: `{"error":{"code","message"}}`, else the status. */
export async function readRefusal(res: Response): Promise<Refusal> {
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    body = undefined;
  }
  const error = (body as { error?: Partial<ErrorBody> } | undefined)?.error;
  if (error && typeof error.code === "string") {
    return { status: res.status, code: error.code, message: typeof error.message === "string" ? error.message : "" };
  }
  return { status: res.status, code: statusCode(res.status), message: `HTTP ${res.status}` };
}

function statusCode(status: number): string {
  switch (status) {
    case 401:
      return "unauthorized";
    case 403:
      return "forbidden";
    case 429:
      return "rate_limited";
    case 503:
      return "unavailable";
    default:
      return "bad_request";
  }
}

/** `ws(s)://` ↔ `http(s)://` for the same endpoint. */
export function withScheme(url: string, family: "ws" | "http"): string {
  if (family === "http") return url.replace(/^ws(s?):/i, "http$1:");
  return url.replace(/^http(s?):/i, "ws$1:");
}
