// `Herald`: one logical connection to a gateway over whichever transport works. Owns the
// connection state machine, transport choice and fallback, reconnect with backoff, the
// watchdog, request/reply matching, and telling a refused connection from an unreachable one.
// Per-channel state lives in subscriptions.ts, token renewal in refresh.ts, the wires in
// transport-*.ts.
import { fullJitter } from "./backoff.js";
import { ClientCloseCode, NO_RECONNECT_CODES } from "./codes.js";
import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";
import type { ClientFrame, PresenceClient, PublishReply, ReplyFrame, ServerFrame, WelcomeFrame } from "./protocol.js";
import { Subscriptions } from "./subscriptions.js";
import { TokenKeeper } from "./refresh.js";
import { withScheme, type Refusal, type Transport, type TransportClose, type TransportName, type TransportOptions } from "./transport.js";
import { SseTransport, defaultSseUrl, sseSupported } from "./transport-sse.js";
import { WebSocketTransport, type WebSocketConstructor } from "./transport-websocket.js";
import type {
  AnyChannels,
  ChannelMap,
  ChannelName,
  ConnectionState,
  DisconnectedEvent,
  FetchLike,
  HeraldEvents,
  HeraldOptions,
  PayloadOf,
  PublicationContext,
  AnyRpc,
  RpcMap,
  RpcRequestOf,
  RpcResponseOf,
  SubscribeOptions,
  Unsubscribe,
} from "./types.js";

interface Pending {
  resolve: (reply: ReplyFrame) => void;
  reject: (error: HeraldError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * A connection to a Herald gateway (protocol v1 over WebSocket or Server-Sent Events).
 * Reconnects with full-jitter backoff, falls back to the next transport when one cannot be
 * opened, restores every subscription with `since` so missed publications are replayed, and
 * renews the token before it runs out.
 */
export class Herald<C extends ChannelMap = AnyChannels, R extends RpcMap = AnyRpc> extends Emitter<HeraldEvents> {
  private readonly wsUrl: string;
  private readonly sseUrl: string;
  private readonly opts: HeraldOptions;
  private readonly ctor: WebSocketConstructor | undefined;
  private readonly fetchImpl: FetchLike | undefined;
  /** The usable transports, in the order to try them. */
  private readonly order: TransportName[];
  private readonly subs: Subscriptions;
  private readonly pending = new Map<number, Pending>();
  private wire: Transport | null = null;
  private currentState: ConnectionState = "disconnected";
  private wanted = false;
  /** Failed attempts since the last `welcome` (the backoff step). */
  private attempt = 0;
  private nextId = 1;
  /** Bumped by every `open()` and `disconnect()`: an attempt that is no longer current stops. */
  private generation = 0;
  /** Index in `order` of the transport that reached `welcome` last: tried first. */
  private preferred = 0;
  /** Transports tried so far with the current token (each at most once per round). */
  private tried = 0;
  /** The gateway refused the last token: the next attempt asks `getToken()` for a fresh one. */
  private refused = false;
  private lastDisconnect: DisconnectedEvent | null = null;
  private pingIntervalMs = 25_000;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private watchdogTimer: ReturnType<typeof setTimeout> | undefined;
  private clientId: string | null = null;
  private userId: string | null = null;
  /** The token in use, and its renewal. */
  private readonly keeper = new TokenKeeper();

  constructor(url: string, opts: HeraldOptions = {}) {
    super();
    this.opts = opts;
    this.ctor = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    const globalFetch = (globalThis as { fetch?: FetchLike }).fetch;
    this.fetchImpl = opts.fetch ?? (globalFetch ? globalFetch.bind(globalThis) : undefined);
    const wanted = opts.transports ?? ["websocket", "sse"];
    this.order = wanted.filter((t, i) => wanted.indexOf(t) === i && this.supported(t));
    if (this.order.length === 0) {
      throw new Error(
        `no usable transport among [${wanted.join(", ")}]: pass a WebSocket implementation with ` +
          "`new Herald(url, { WebSocket })`, or a `fetch` with streaming bodies for SSE",
      );
    }
    this.wsUrl = withScheme(url, "ws");
    this.sseUrl = opts.sseUrl ?? defaultSseUrl(url);
    const connected = () => this.connected;
    this.subs = new Subscriptions({
      get connected() {
        return connected();
      },
      request: (frame) => this.request(frame),
      subscribed: (info) => this.emit("subscribed", info),
      error: (err) => this.emit("error", err),
      subscriptionToken: async (channel) => {
        const get = this.opts.getSubscriptionToken;
        if (!get) return undefined;
        try {
          return (await get(channel)) ?? undefined;
        } catch (e) {
          throw new HeraldError("token", `getSubscriptionToken(${JSON.stringify(channel)}) failed: ${String(e)}`);
        }
      },
    });
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  get connected(): boolean {
    return this.currentState === "connected";
  }

  /** The connection id from the last `welcome`. */
  get client(): string | null {
    return this.clientId;
  }

  /** The user id from the last `welcome` (`null` when anonymous). */
  get user(): string | null {
    return this.userId;
  }

  /** The transport of the current connection (or attempt); `null` when there is none. */
  get transport(): TransportName | null {
    return this.wire?.name ?? null;
  }

  /**
   * The number of the reconnection attempt under way or waiting for its backoff (1 for the
   * first retry after a connection was lost or could not be opened); 0 while connected, before
   * the first failure, and once the client has stopped.
   */
  get reconnectAttempt(): number {
    return this.wanted && !this.connected ? this.attempt : 0;
  }

  /** Opens the connection (and keeps it open until `disconnect()`). */
  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.attempt = 0;
    this.refused = false;
    void this.open();
  }

  /** Closes the connection; subscriptions are kept and restored by the next `connect()`. */
  disconnect(): void {
    this.wanted = false;
    this.generation++;
    clearTimeout(this.reconnectTimer);
    if (this.wire) {
      this.lastDisconnect = { code: ClientCloseCode.Normal, reason: "client disconnect", reconnect: false };
      this.wire.abort(ClientCloseCode.Normal, "client disconnect");
    } else {
      this.setState("disconnected");
    }
  }

  /**
   * Calls `handler` with every publication on `channel` from now on. Several handlers on one
   * channel share one server subscription. Returns the function that removes the handler.
   */
  subscribe<K extends ChannelName<C>>(
    channel: K,
    handler: (data: PayloadOf<C, K>, pub: PublicationContext) => void,
    opts: SubscribeOptions = {},
  ): Unsubscribe {
    return this.subs.add(channel, handler as (data: unknown, pub: PublicationContext) => void, opts);
  }

  /** Publishes on a channel whose descriptor lets this identity publish (gate 3). */
  async publish<K extends ChannelName<C>>(channel: K, data: PayloadOf<C, K>): Promise<PublishReply> {
    const reply = await this.request({ type: "publish", channel, data });
    return { offset: reply["offset"] as number, epoch: reply["epoch"] as string };
  }

  /**
   * Calls a `[[rpc]]` method of the gateway's config: `data` is checked against the method's
   * request schema, your backend answers, and the answer (checked against the response
   * schema) resolves the promise. Rejects with `rpc_error` (the backend's own error),
   * `invalid_payload`, `not_found` (no such method) or `unavailable`.
   */
  async rpc<M extends keyof R & string>(method: M, data: RpcRequestOf<R, M>): Promise<RpcResponseOf<R, M>> {
    const reply = await this.request({ type: "rpc", method, data });
    return reply["data"] as RpcResponseOf<R, M>;
  }

  /** The clients connected to a presence channel the connection is subscribed to. */
  async presence(channel: ChannelName<C>): Promise<PresenceClient[]> {
    const reply = await this.request({ type: "presence", channel });
    return reply["clients"] as PresenceClient[];
  }

  // ---- connection -------------------------------------------------------------------------

  private supported(t: TransportName): boolean {
    if (t === "websocket") return this.ctor !== undefined;
    if (t === "sse") return sseSupported(this.fetchImpl);
    return false;
  }

  private setState(state: ConnectionState): void {
    const previous = this.currentState;
    if (previous === state) return;
    this.currentState = state;
    this.emit("state", { state, previous });
  }

  /** One attempt: a token, then the transports in turn until one opens. */
  private async open(): Promise<void> {
    const generation = ++this.generation;
    this.setState("connecting");
    let token: string | undefined;
    try {
      token = this.opts.getToken ? await this.opts.getToken() : this.opts.token;
    } catch (e) {
      if (generation !== this.generation) return;
      this.emit("error", new HeraldError("token", `getToken failed: ${String(e)}`));
      this.scheduleReconnect();
      this.setState("disconnected");
      return;
    }
    // disconnect() (and maybe connect() again, as React's StrictMode does) ran meanwhile.
    if (generation !== this.generation) return;
    if (!this.wanted) {
      this.setState("disconnected");
      return;
    }
    this.keeper.received(token);
    this.tried = 0;
    this.start();
  }

  /** Opens the next transport of this round with the current token. */
  private start(): void {
    const name = this.order[(this.preferred + this.tried) % this.order.length]!;
    this.lastDisconnect = null;
    let wire: Transport | null = null;
    const options: TransportOptions = {
      token: () => this.keeper.token,
      events: {
        open: () => {
          if (this.wire === wire) this.armWatchdog(this.pingIntervalMs);
        },
        message: (text) => {
          if (this.wire === wire) this.onText(text);
        },
        alive: () => {
          if (this.wire === wire) this.armWatchdog(this.pingIntervalMs);
        },
        close: (info) => {
          if (this.wire === wire) this.onClose(info);
        },
      },
    };
    try {
      wire =
        name === "websocket"
          ? new WebSocketTransport(this.wsUrl, this.ctor!, this.fetchImpl, options)
          : new SseTransport(this.sseUrl, this.fetchImpl!, options);
    } catch (e) {
      // e.g. a malformed URL: report it like any connection that could not be opened.
      this.emit("error", new HeraldError("transport", `${name}: ${String(e)}`));
      queueMicrotask(() => this.onClose({ code: ClientCloseCode.Abnormal, reason: String(e), opened: false }));
      return;
    }
    this.wire = wire;
    // A transport that never opens (e.g. a black-holed network) is also cut by the watchdog.
    this.armWatchdog(this.pingIntervalMs);
  }

  private scheduleReconnect(): void {
    clearTimeout(this.reconnectTimer);
    if (!this.wanted) return;
    const delay = fullJitter(this.attempt++, {
      minDelayMs: this.opts.minReconnectDelayMs,
      maxDelayMs: this.opts.maxReconnectDelayMs,
    });
    this.reconnectTimer = setTimeout(() => {
      if (this.wanted && this.wire === null) void this.open();
    }, delay);
  }

  private onClose(info: TransportClose): void {
    this.wire = null;
    clearTimeout(this.watchdogTimer);
    this.keeper.stop();
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new HeraldError("disconnected", "the connection closed before the reply"));
      this.pending.delete(id);
    }
    this.subs.disconnected();
    if (this.wanted && info.refusal && this.onRefusal(info.refusal)) return;
    if (this.wanted && !info.opened && !info.refusal && this.tried + 1 < this.order.length) {
      // Not refused, just not opened (a proxy that blocks WebSocket, say): the next transport, at once.
      this.tried++;
      this.start();
      return;
    }
    const told = this.lastDisconnect;
    const reconnect = this.wanted && (told ? told.reconnect : !NO_RECONNECT_CODES.has(info.code));
    const event: DisconnectedEvent = told ? { ...told, reconnect } : { code: info.code, reason: info.reason, reconnect };
    if (reconnect) this.scheduleReconnect();
    else this.wanted = false;
    this.setState("disconnected");
    this.emit("disconnected", event);
  }

  /**
   * The gateway refused the connection (learned over HTTP). Returns true when handled here:
   * a refused token is retried once with a fresh one from `getToken()` and then reported as
   * `unauthorized`; a refused origin is reported as `forbidden`. Both stop the client. Other
   * refusals (`too_many_connections`, `unavailable`) are reported and retried with backoff.
   */
  private onRefusal(r: Refusal): boolean {
    if (r.status === 401) {
      if (this.opts.getToken && !this.refused) {
        this.refused = true; // the token may just have expired: one fresh one, at once
        void this.open();
        return true;
      }
      this.stop(new HeraldError("unauthorized", `the gateway refused the token: ${r.message}`));
      return true;
    }
    if (r.status === 403) {
      this.stop(new HeraldError(r.code, `the gateway refused the connection: ${r.message}`));
      return true;
    }
    this.emit("error", new HeraldError(r.code, r.message));
    return false;
  }

  /** Gives up: no reconnect until the application calls `connect()` again. */
  private stop(error: HeraldError): void {
    this.wanted = false;
    this.refused = false;
    this.setState("disconnected");
    this.emit("error", error);
    this.emit("disconnected", { code: ClientCloseCode.Refused, reason: error.message, reconnect: false, error });
  }

  private armWatchdog(intervalMs: number): void {
    clearTimeout(this.watchdogTimer);
    const grace = this.opts.pingGraceMs ?? 10_000;
    const wire = this.wire;
    this.watchdogTimer = setTimeout(() => {
      if (wire && this.wire === wire) wire.abort(ClientCloseCode.NoFrame, "no frame from the server");
    }, intervalMs + grace);
  }

  private onText(text: string): void {
    this.armWatchdog(this.pingIntervalMs);
    let frame: ServerFrame;
    try {
      frame = JSON.parse(text) as ServerFrame;
    } catch {
      this.wire?.abort(4400, "unparsable frame from the server");
      return;
    }
    switch (frame.type) {
      case "welcome":
        this.onWelcome(frame);
        break;
      case "ping":
        this.wire?.send({ type: "pong" });
        break;
      case "reply":
        this.onReply(frame);
        break;
      case "pub":
        this.subs.pub(frame);
        break;
      case "join":
      case "leave":
        this.subs.presence(frame);
        break;
      case "unsubscribed":
        this.subs.unsubscribed(frame);
        break;
      case "disconnect":
        this.lastDisconnect = { code: frame.code, reason: frame.reason, reconnect: frame.reconnect };
        break;
      case "error": {
        const err = HeraldError.from(frame.error);
        if (!(frame.channel && this.subs.refused(frame.channel, err))) this.emit("error", err);
        break;
      }
      default:
        break;
    }
  }

  private onWelcome(w: WelcomeFrame): void {
    this.attempt = 0;
    this.refused = false;
    if (this.wire) this.preferred = Math.max(0, this.order.indexOf(this.wire.name));
    this.clientId = w.client;
    this.userId = w.user;
    if (w.ping_interval_ms > 0) this.pingIntervalMs = w.ping_interval_ms;
    this.armWatchdog(this.pingIntervalMs);
    this.setState("connected");
    const getToken = this.opts.getToken;
    if (getToken && this.opts.refreshToken !== false) {
      this.keeper.start({
        getToken,
        refresh: (token) => this.request({ type: "refresh", token }),
        failed: (err) => this.emit("error", err),
      });
    }
    this.subs.welcome(w.subscriptions);
    this.emit("connected", { client: w.client, user: w.user, transport: this.wire?.name ?? "websocket" });
  }

  // ---- requests ---------------------------------------------------------------------------

  private request(frame: ClientFrame): Promise<ReplyFrame> {
    const wire = this.wire;
    if (!this.connected || !wire) {
      return Promise.reject(new HeraldError("not_connected", "not connected to the gateway"));
    }
    const id = this.nextId++;
    return new Promise<ReplyFrame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new HeraldError("timeout", `no reply to ${frame.type} within the request timeout`));
      }, this.opts.requestTimeoutMs ?? 10_000);
      this.pending.set(id, { resolve, reject, timer });
      wire.send({ ...frame, id });
    });
  }

  private onReply(reply: ReplyFrame): void {
    const p = this.pending.get(reply.id);
    if (!p) return;
    this.pending.delete(reply.id);
    clearTimeout(p.timer);
    if (reply.ok) p.resolve(reply);
    else p.reject(HeraldError.from(reply.error ?? { code: "internal", message: "reply without error" }));
  }
}
