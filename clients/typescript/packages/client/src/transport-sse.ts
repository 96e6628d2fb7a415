// The Server-Sent Events transport: `GET /v1/sse` streams protocol v1 frames as SSE events,
// and `POST /v1/sse/{session}` carries each client frame; its reply comes back on the stream.
//
// `fetch` with a streaming body rather than `EventSource`: it carries the `Authorization`
// header (EventSource cannot), reads the refusal's status and JSON body, and works the same in
// browsers and Node ≥ 20. `EventSource`'s own reconnect and `Last-Event-ID` resume are not
// used: `Herald` reconnects and resubscribes with `since` for every transport alike.
import type { ClientFrame } from "./protocol.js";
import { authHeaders, readRefusal, withScheme, type Transport, type TransportClose, type TransportOptions } from "./transport.js";
import type { FetchLike } from "./types.js";

/** `ws(s)://host/v1/ws` → `http(s)://host/v1/sse` (the last path segment `ws` becomes `sse`). */
export function defaultSseUrl(url: string): string {
  const http = withScheme(url, "http");
  try {
    const u = new URL(http);
    u.pathname = u.pathname.replace(/\/ws\/?$/, "/sse");
    return u.toString();
  } catch {
    return http.replace(/\/ws(\/?)(?=$|\?)/, "/sse$1");
  }
}

/** True where the SSE transport can run (a `fetch` whose responses have a readable body). */
export function sseSupported(fetchImpl: FetchLike | undefined): boolean {
  return typeof fetchImpl === "function" && typeof ReadableStream === "function" && typeof TextDecoder === "function";
}

/** One SSE stream and its command channel; reports `close` exactly once, whatever ends it. */
export class SseTransport implements Transport {
  readonly name = "sse" as const;
  private readonly abortController = new AbortController();
  private opened = false;
  private closed = false;
  private session: string | null = null;
  /** Commands wait here and go one at a time, so the server sees them in the order sent. */
  private readonly queue: ClientFrame[] = [];
  private sending = false;

  constructor(
    private readonly url: string,
    private readonly fetchImpl: FetchLike,
    private readonly opts: TransportOptions,
  ) {
    void this.run();
  }

  send(frame: ClientFrame): void {
    // The server keeps an SSE stream alive with comments and never sends `ping` events.
    if (this.closed || frame.type === "pong") return;
    this.queue.push(frame);
    if (!this.sending) void this.pump();
  }

  abort(code: number, reason: string): void {
    this.finish({ code, reason, opened: this.opened });
  }

  private async run(): Promise<void> {
    let res: Response;
    try {
      res = await this.fetchImpl(this.url, {
        headers: { accept: "text/event-stream", ...authHeaders(this.opts.token()) },
        cache: "no-store",
        signal: this.abortController.signal,
      });
    } catch (e) {
      this.finish({ code: 1006, reason: `the SSE stream could not be opened: ${String(e)}`, opened: false });
      return;
    }
    if (this.closed) return;
    const type = res.headers.get("content-type") ?? "";
    if (!res.ok || !res.body || !type.startsWith("text/event-stream")) {
      const refusal = [401, 403, 429, 503].includes(res.status) ? await readRefusal(res) : undefined;
      if (!refusal) await res.body?.cancel().catch(() => {});
      this.finish({
        code: 1006,
        reason: `the SSE stream could not be opened: HTTP ${res.status} ${type}`.trim(),
        opened: false,
        ...(refusal ? { refusal } : {}),
      });
      return;
    }
    this.opened = true;
    this.opts.events.open();
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser(
      (ev) => this.onEvent(ev),
      () => this.opts.events.alive(),
    );
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (this.closed) return;
        if (done) break;
        parser.push(decoder.decode(value, { stream: true }));
      }
    } catch (e) {
      this.finish({ code: 1006, reason: `the SSE stream broke: ${String(e)}`, opened: true });
      return;
    }
    this.finish({ code: 1006, reason: "the SSE stream ended", opened: true });
  }

  private onEvent(ev: SseEvent): void {
    if (this.closed) return;
    if (this.session === null && (ev.event === "welcome" || ev.data.includes('"welcome"'))) {
      try {
        const frame = JSON.parse(ev.data) as { type?: string; session?: unknown };
        if (frame.type === "welcome" && typeof frame.session === "string") this.session = frame.session;
      } catch {
        // Herald reports the unparsable frame.
      }
    }
    this.opts.events.message(ev.data);
  }

  private async pump(): Promise<void> {
    this.sending = true;
    try {
      while (!this.closed && this.queue.length > 0) {
        await this.post(this.queue.shift()!);
      }
    } finally {
      this.sending = false;
    }
  }

  private async post(frame: ClientFrame): Promise<void> {
    if (this.session === null) {
      this.answerError(frame, { code: "not_connected", message: "no SSE session yet" });
      return;
    }
    // A refresh authenticates with the new token: the old one may be about to run out.
    const token = frame.type === "refresh" && typeof frame["token"] === "string" ? (frame["token"] as string) : this.opts.token();
    const target = new URL(this.url);
    target.pathname = `${target.pathname.replace(/\/$/, "")}/${encodeURIComponent(this.session)}`;
    let res: Response;
    try {
      res = await this.fetchImpl(target.toString(), {
        method: "POST",
        headers: { "content-type": "application/json", ...authHeaders(token) },
        body: JSON.stringify(frame),
        cache: "no-store",
        signal: this.abortController.signal,
      });
    } catch (e) {
      // The command may or may not have arrived; start over (reconnect, resubscribe with since).
      this.abort(1006, `an SSE command could not be sent: ${String(e)}`);
      return;
    }
    if (res.ok) {
      await res.body?.cancel().catch(() => {});
      return;
    }
    const refusal = await readRefusal(res);
    if (res.status === 404) {
      this.abort(1006, "the SSE session ended");
      return;
    }
    this.answerError(frame, { code: refusal.code, message: refusal.message });
  }

  /** A command the server did not take gets its answer here, as the stream would have given it. */
  private answerError(frame: ClientFrame, error: { code: string; message: string }): void {
    if (this.closed) return;
    const answer = frame.id !== undefined ? { type: "reply", id: frame.id, ok: false, error } : { type: "error", error };
    this.opts.events.message(JSON.stringify(answer));
  }

  private finish(info: TransportClose): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.abortController.abort();
    this.opts.events.close(info);
  }
}

export interface SseEvent {
  /** The `event:` field (`message` when absent). */
  event: string;
  /** The `data:` lines joined with `\n`. */
  data: string;
  /** The last `id:` field of the event, if any. */
  id: string | undefined;
}

/**
 * An incremental parser of the `text/event-stream` format (WHATWG HTML, "Server-sent events"):
 * lines end with CRLF, LF or CR (also across chunk boundaries); `data:` lines are joined with
 * "\n"; an event is dispatched at a blank line when it has data; lines starting with `:` are
 * comments (keep-alives); one space after the colon is dropped; unknown fields are ignored.
 */
export class SseParser {
  private buffer = "";
  private data: string[] = [];
  private event = "";
  private id: string | undefined;
  private started = false;
  private afterCR = false;

  constructor(
    private readonly onEvent: (ev: SseEvent) => void,
    private readonly onComment: (text: string) => void = () => {},
  ) {}

  /** Feeds decoded text. */
  push(chunk: string): void {
    let buf = this.buffer + chunk;
    if (!this.started && buf.length > 0) {
      this.started = true;
      if (buf.charCodeAt(0) === 0xfeff) buf = buf.slice(1);
    }
    let i = 0;
    // A CR ended the previous line; an LF right after it (maybe in this chunk) belongs to it.
    if (this.afterCR && buf.charCodeAt(0) === 10) i = 1;
    this.afterCR = false;
    for (;;) {
      const lf = buf.indexOf("\n", i);
      const cr = buf.indexOf("\r", i);
      const end = cr >= 0 && (lf < 0 || cr < lf) ? cr : lf;
      if (end < 0) break;
      this.line(buf.slice(i, end));
      i = end + 1;
      if (end === cr) {
        if (i === buf.length) this.afterCR = true;
        else if (buf.charCodeAt(i) === 10) i++;
      }
    }
    this.buffer = buf.slice(i);
  }

  private line(line: string): void {
    if (line === "") {
      if (this.data.length > 0) this.onEvent({ event: this.event || "message", data: this.data.join("\n"), id: this.id });
      this.data = [];
      this.event = "";
      this.id = undefined;
      return;
    }
    if (line.startsWith(":")) {
      this.onComment(line.slice(1).trimStart());
      return;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "data":
        this.data.push(value);
        break;
      case "event":
        this.event = value;
        break;
      case "id":
        if (!value.includes("\0")) this.id = value;
        break;
      default:
        // `retry:` and unknown fields: Herald has its own backoff.
        break;
    }
  }
}
