/**
 * The WebSocket transport. Only the standard browser API is used (`onopen`, `onmessage`,
 * `onclose`, `onerror`, `send`, `close`), so the global `WebSocket` of a browser or of Node ≥ 22
 * works, and so does the `ws` package in older Node (`new Herald(url, { WebSocket })`).
 */

/** The part of the WebSocket API Herald uses. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface TransportEvents {
  message(text: string): void;
  close(code: number, reason: string): void;
}

const OPEN = 1;

/** One WebSocket connection; calls `events.close` exactly once, whatever ends it. */
export class WebSocketTransport {
  private socket: WebSocketLike | null;
  private closed = false;

  constructor(url: string, ctor: WebSocketConstructor, private readonly events: TransportEvents) {
    const socket = new ctor(url);
    this.socket = socket;
    socket.onmessage = (ev) => {
      if (this.closed) return;
      if (typeof ev.data === "string") this.events.message(ev.data);
      else this.abort(4400, "binary frame");
    };
    socket.onclose = (ev) => this.finish(ev.code, ev.reason);
    // An error is always followed by a close event; nothing to do here but avoid an
    // "unhandled error" from implementations that require a listener.
    socket.onerror = () => {};
  }

  get isOpen(): boolean {
    return !this.closed && this.socket?.readyState === OPEN;
  }

  send(text: string): boolean {
    if (!this.isOpen || !this.socket) return false;
    this.socket.send(text);
    return true;
  }

  /** Closes the socket and reports `close` at once (does not wait for the peer). */
  abort(code: number, reason: string): void {
    const socket = this.socket;
    this.finish(code, reason);
    if (socket) {
      try {
        // Browsers only accept 1000 or 3000-4999 from scripts.
        socket.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason);
      } catch {
        // already closing
      }
    }
  }

  private finish(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    if (this.socket) {
      this.socket.onmessage = null;
      this.socket.onclose = null;
      this.socket.onopen = null;
    }
    this.socket = null;
    this.events.close(code, reason);
  }
}
