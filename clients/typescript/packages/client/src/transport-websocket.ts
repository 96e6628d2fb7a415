// The WebSocket transport (`GET /v1/ws`). Only the standard browser API is used (`onopen`,
// `onmessage`, `onclose`, `onerror`, `send`, `close`), so the global `WebSocket` of a browser or
// of Node ≥ 22 works, and so does the `ws` package in older Node (`new Herald(url, { WebSocket })`).
//
// Browsers hide the HTTP status of a refused upgrade (a 401 looks like any network failure), so
// when the socket closes without ever opening this transport asks the gateway why with a plain
// `GET` of the same URL and the same credentials: the gateway answers the refusal it would give
// (`401 unauthorized`, `403`, `429`, `503`) or `426 upgrade_required` when it would accept them.
import type { ClientFrame } from "./protocol.js";
import { authHeaders, readRefusal, withScheme, type Refusal, type Transport, type TransportClose, type TransportOptions } from "./transport.js";
import type { FetchLike } from "./types.js";

/**
 * An event handler property, compared bivariantly (as a method would be). Herald only ever
 * assigns handlers that read the fields below, so an implementation whose handlers take a richer
 * event (the `ws` package's `MessageEvent`, `CloseEvent`, with a `this` type) fits without a
 * cast; a strict function-type property would refuse it under `strictFunctionTypes`.
 */
type Handler<E> = { bivarianceHack(ev: E): void }["bivarianceHack"];

/** The part of the WebSocket API Herald uses. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

const OPEN = 1;

/** One WebSocket connection; reports `close` exactly once, whatever ends it. */
export class WebSocketTransport implements Transport {
  readonly name = "websocket" as const;
  private socket: WebSocketLike | null;
  private opened = false;
  private closed = false;

  constructor(
    url: string,
    ctor: WebSocketConstructor,
    private readonly fetchImpl: FetchLike | undefined,
    private readonly opts: TransportOptions,
  ) {
    const token = opts.token();
    const socket = new ctor(token === undefined ? url : withToken(url, token));
    this.socket = socket;
    socket.onopen = () => {
      if (this.closed) return;
      this.opened = true;
      this.opts.events.open();
    };
    socket.onmessage = (ev) => {
      if (this.closed) return;
      if (typeof ev.data === "string") this.opts.events.message(ev.data);
      else this.abort(4400, "binary frame");
    };
    socket.onclose = (ev) => {
      if (this.opened || !this.fetchImpl) {
        this.finish({ code: ev.code, reason: ev.reason, opened: this.opened });
        return;
      }
      // Never opened: refused, or unreachable? Ask before reporting (abort() may win the race).
      this.detach();
      void probeRefusal(url, token, this.fetchImpl).then((refusal) =>
        this.finish({ code: ev.code, reason: ev.reason || "the WebSocket could not be opened", opened: false, ...(refusal ? { refusal } : {}) }),
      );
    };
    // An error is always followed by a close event; nothing to do here but avoid an
    // "unhandled error" from implementations that require a listener.
    socket.onerror = () => {};
  }

  send(frame: ClientFrame): void {
    const socket = this.socket;
    if (this.closed || !socket || socket.readyState !== OPEN) return;
    socket.send(JSON.stringify(frame));
  }

  abort(code: number, reason: string): void {
    const socket = this.socket;
    this.finish({ code, reason, opened: this.opened });
    if (socket) {
      try {
        // Browsers only accept 1000 or 3000-4999 from scripts.
        socket.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason);
      } catch {
        // already closing
      }
    }
  }

  private detach(): void {
    if (this.socket) {
      this.socket.onmessage = null;
      this.socket.onclose = null;
      this.socket.onopen = null;
    }
    this.socket = null;
  }

  private finish(info: TransportClose): void {
    if (this.closed) return;
    this.closed = true;
    this.detach();
    this.opts.events.close(info);
  }
}

/**
 * Why a WebSocket upgrade with these credentials failed, asked over plain HTTP: the refusal
 * (a JSON error body with 401, 403, 429 or 503), or `undefined` when the gateway would accept
 * them (`426`), did not answer (unreachable) or does not know the probe (an older gateway).
 */
export async function probeRefusal(url: string, token: string | undefined, fetchImpl: FetchLike): Promise<Refusal | undefined> {
  try {
    const res = await fetchImpl(withScheme(url, "http"), { headers: authHeaders(token), cache: "no-store" });
    const json = res.headers.get("content-type")?.includes("json") ?? false;
    if (json && [401, 403, 429, 503].includes(res.status)) return await readRefusal(res);
    await res.body?.cancel().catch(() => {});
    return undefined;
  } catch {
    return undefined;
  }
}

function withToken(url: string, token: string): string {
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}
