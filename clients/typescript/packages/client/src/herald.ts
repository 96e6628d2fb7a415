import { fullJitter } from "./backoff.js";
import { Emitter, reportLater } from "./emitter.js";
import { HeraldError } from "./errors.js";
import {
  NO_RECONNECT_CODES,
  type ChannelPosition,
  type PresenceClient,
  type PubFrame,
  type PublishReply,
  type ReplyFrame,
  type ServerFrame,
  type SubscribeReply,
  type WelcomeFrame,
} from "./protocol.js";
import { refreshDelay, tokenLifetime } from "./token.js";
import { WebSocketTransport, type WebSocketConstructor } from "./transport-websocket.js";

/**
 * A map from channel name to payload type, e.g. the `HeraldChannels` interface that
 * `herald codegen typescript` writes. Template channels are template-literal keys
 * (`[channel: \`notifications.user.${string}\`]: Notification`).
 */
export type ChannelMap = object;

/** The channel map used when none is given: any name, `unknown` payloads. */
export type AnyChannels = Record<string, unknown>;

/** The channel names a map accepts (a literal name matches a template-literal key). */
export type ChannelName<C extends ChannelMap> = keyof C & string;

/** The payload type of channel `K`. */
export type PayloadOf<C extends ChannelMap, K extends string> = K extends keyof C ? C[K] : never;

export type ConnectionState = "disconnected" | "connecting" | "connected";

export interface HeraldOptions {
  /** A fixed token (no refresh possible). */
  token?: string;
  /** Called before every connection attempt and before the token expires. */
  getToken?: () => string | Promise<string>;
  /** WebSocket implementation; default: the global `WebSocket`. In Node < 22 pass `ws`. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect backoff: first retry's ceiling (default 500 ms). */
  minReconnectDelayMs?: number;
  /** Reconnect backoff: ceiling of every retry (default 20 s). */
  maxReconnectDelayMs?: number;
  /** How long a request waits for its reply (default 10 s). */
  requestTimeoutMs?: number;
  /**
   * The watchdog closes and reconnects a connection on which nothing arrived for
   * `ping_interval_ms` (from `welcome`) plus this (default 10 s).
   */
  pingGraceMs?: number;
  /** Renew the identity with `getToken()` before the token's `exp` (default true). */
  refreshToken?: boolean;
}

/** Where a publication sits in its channel's history. */
export interface PublicationContext {
  channel: string;
  offset: number;
  epoch: string;
}

/** Reported each time a subscription is (re)established. */
export interface SubscribedInfo extends PublicationContext {
  /** True when this restores an earlier subscription (after a reconnect or a server request). */
  resubscribed: boolean;
  /** True when nothing was missed (or everything missed was replayed). */
  recovered: boolean;
  /**
   * `resubscribed && !recovered`: publications may have been missed (history gone, epoch
   * changed after a gateway restart). Refetch the state from your backend.
   */
  lost: boolean;
}

export interface PresenceEvent {
  type: "join" | "leave";
  channel: string;
  user: string | null;
  client: string;
}

export interface SubscribeOptions {
  /** Every (re)subscription, with its recovery outcome. */
  onSubscribed?: (info: SubscribedInfo) => void;
  /** A resubscription could not recover what was missed: refetch from your backend. */
  onRecoveryFailed?: (info: SubscribedInfo) => void;
  /** The subscription was refused (`forbidden`, `unknown_channel`, …) or removed by the server. */
  onError?: (error: HeraldError) => void;
  /** `join` / `leave` on presence channels. */
  onPresence?: (event: PresenceEvent) => void;
}

/** Removes the handler; the channel is left when its last handler goes. */
export interface Unsubscribe {
  (): void;
  /** Settles with the first subscription outcome (rejects with the server's error). */
  readonly ready: Promise<SubscribedInfo>;
}

export interface DisconnectedEvent {
  code: number;
  reason: string;
  /** False when the client will not reconnect by itself (kicked, bad frame, `disconnect()`). */
  reconnect: boolean;
}

export interface HeraldEvents {
  state: { state: ConnectionState; previous: ConnectionState };
  connected: { client: string; user: string | null };
  disconnected: DisconnectedEvent;
  subscribed: SubscribedInfo;
  error: HeraldError;
}

type Handler = (data: never, pub: PublicationContext) => void;

interface Listener {
  handler: Handler;
  opts: SubscribeOptions;
  settle: ((info: SubscribedInfo | HeraldError) => void) | null;
}

interface Sub {
  channel: string;
  listeners: Set<Listener>;
  /** Last delivered position: the `since` of the next resubscription. */
  position: ChannelPosition | null;
  /** Subscribed by the server at connect (`auto_subscribe`). */
  auto: boolean;
  status: "idle" | "subscribing" | "subscribed";
  /** Publications that arrived before the subscribe reply. */
  buffer: PubFrame[];
  info: SubscribedInfo | null;
}

interface Pending {
  resolve: (reply: ReplyFrame) => void;
  reject: (error: HeraldError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * A connection to a Herald gateway (protocol v1). Reconnects with full-jitter backoff,
 * restores every subscription with `since` so missed publications are replayed, and renews the
 * token before it expires.
 */
export class Herald<C extends ChannelMap = AnyChannels> extends Emitter<HeraldEvents> {
  private readonly url: string;
  private readonly opts: HeraldOptions;
  private readonly ctor: WebSocketConstructor;
  private readonly subs = new Map<string, Sub>();
  private readonly pending = new Map<number, Pending>();
  private transport: WebSocketTransport | null = null;
  private currentState: ConnectionState = "disconnected";
  private wanted = false;
  private attempt = 0;
  private nextId = 1;
  /** Bumped by every `open()` and `disconnect()`: an attempt that is no longer current stops. */
  private generation = 0;
  private token: string | undefined;
  private lastDisconnect: DisconnectedEvent | null = null;
  private pingIntervalMs = 25_000;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private watchdogTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private clientId: string | null = null;
  private userId: string | null = null;

  constructor(url: string, opts: HeraldOptions = {}) {
    super();
    const ctor = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!ctor) {
      throw new Error("no WebSocket implementation: pass one with `new Herald(url, { WebSocket })`");
    }
    this.url = url;
    this.opts = opts;
    this.ctor = ctor;
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

  /** Opens the connection (and keeps it open until `disconnect()`). */
  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.attempt = 0;
    void this.open();
  }

  /** Closes the connection; subscriptions are kept and restored by the next `connect()`. */
  disconnect(): void {
    this.wanted = false;
    this.generation++;
    clearTimeout(this.reconnectTimer);
    if (this.transport) {
      this.lastDisconnect = { code: 1000, reason: "client disconnect", reconnect: false };
      this.transport.abort(1000, "client disconnect");
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
    let settle: (info: SubscribedInfo | HeraldError) => void = () => {};
    const ready = new Promise<SubscribedInfo>((resolve, reject) => {
      settle = (r) => (r instanceof HeraldError ? reject(r) : resolve(r));
    });
    // The caller may ignore `ready`; its rejection is also reported through `onError`.
    ready.catch(() => {});
    const listener: Listener = { handler: handler as Handler, opts, settle };
    let sub = this.subs.get(channel);
    if (!sub) {
      sub = { channel, listeners: new Set(), position: null, auto: false, status: "idle", buffer: [], info: null };
      this.subs.set(channel, sub);
    }
    sub.listeners.add(listener);
    if (sub.status === "subscribed" && sub.info) {
      settleListener(listener, { ...sub.info, resubscribed: false, recovered: true, lost: false });
    } else if (sub.status === "idle" && this.connected) {
      this.sendSubscribe(sub);
    }
    const target = sub;
    const unsubscribe = () => this.removeListener(target, listener);
    return Object.assign(unsubscribe, { ready });
  }

  /** Publishes on a channel whose descriptor lets this identity publish (gate 3). */
  async publish<K extends ChannelName<C>>(channel: K, data: PayloadOf<C, K>): Promise<PublishReply> {
    const reply = await this.request({ type: "publish", channel, data });
    return { offset: reply["offset"] as number, epoch: reply["epoch"] as string };
  }

  /** The clients connected to a presence channel the connection is subscribed to. */
  async presence(channel: ChannelName<C>): Promise<PresenceClient[]> {
    const reply = await this.request({ type: "presence", channel });
    return reply["clients"] as PresenceClient[];
  }

  // ---- connection -------------------------------------------------------------------------

  private setState(state: ConnectionState): void {
    const previous = this.currentState;
    if (previous === state) return;
    this.currentState = state;
    this.emit("state", { state, previous });
  }

  private async open(): Promise<void> {
    const generation = ++this.generation;
    this.setState("connecting");
    let token: string | undefined;
    try {
      token = this.opts.getToken ? await this.opts.getToken() : this.opts.token;
    } catch (e) {
      if (generation !== this.generation) return;
      this.emit("error", new HeraldError("token", `getToken failed: ${String(e)}`));
      this.setState("disconnected");
      this.scheduleReconnect();
      return;
    }
    // disconnect() (and maybe connect() again, as React's StrictMode does) ran meanwhile.
    if (generation !== this.generation) return;
    if (!this.wanted) {
      this.setState("disconnected");
      return;
    }
    this.token = token;
    this.lastDisconnect = null;
    const url = token === undefined ? this.url : withToken(this.url, token);
    const transport: WebSocketTransport = new WebSocketTransport(url, this.ctor, {
      message: (text) => this.transport === transport && this.onText(text),
      close: (code, reason) => this.transport === transport && this.onClose(code, reason),
    });
    this.transport = transport;
    // A socket that never opens (e.g. a black-holed network) is also cut by the watchdog.
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
      if (this.wanted && this.transport === null) void this.open();
    }, delay);
  }

  private onClose(code: number, reason: string): void {
    this.transport = null;
    clearTimeout(this.watchdogTimer);
    clearTimeout(this.refreshTimer);
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new HeraldError("disconnected", "the connection closed before the reply"));
      this.pending.delete(id);
    }
    for (const sub of this.subs.values()) {
      sub.status = "idle";
      sub.buffer = [];
      sub.auto = false;
    }
    const told = this.lastDisconnect;
    const reconnect = this.wanted && (told ? told.reconnect : !NO_RECONNECT_CODES.has(code));
    const event: DisconnectedEvent = told
      ? { ...told, reconnect }
      : { code, reason, reconnect };
    if (!reconnect) this.wanted = false;
    this.setState("disconnected");
    this.emit("disconnected", event);
    if (reconnect) this.scheduleReconnect();
  }

  private armWatchdog(intervalMs: number): void {
    clearTimeout(this.watchdogTimer);
    const grace = this.opts.pingGraceMs ?? 10_000;
    const transport = this.transport;
    this.watchdogTimer = setTimeout(() => {
      if (transport && this.transport === transport) transport.abort(4408, "no frame from the server");
    }, intervalMs + grace);
  }

  private onText(text: string): void {
    this.armWatchdog(this.pingIntervalMs);
    let frame: ServerFrame;
    try {
      frame = JSON.parse(text) as ServerFrame;
    } catch {
      this.transport?.abort(4400, "unparsable frame from the server");
      return;
    }
    switch (frame.type) {
      case "welcome":
        this.onWelcome(frame);
        break;
      case "ping":
        this.transport?.send('{"type":"pong"}');
        break;
      case "reply":
        this.onReply(frame);
        break;
      case "pub":
        this.onPub(frame);
        break;
      case "join":
      case "leave": {
        const sub = this.subs.get(frame.channel);
        if (!sub) break;
        const event: PresenceEvent = { type: frame.type, channel: frame.channel, user: frame.user, client: frame.client };
        for (const l of sub.listeners) call(l.opts.onPresence, event);
        break;
      }
      case "unsubscribed": {
        const sub = this.subs.get(frame.channel);
        if (!sub) break;
        if (frame.reason === "resubscribe") {
          // The server lost continuity for this channel: resubscribe with `since`.
          sub.status = "idle";
          sub.auto = false;
          if (this.connected) this.sendSubscribe(sub);
        } else {
          this.subs.delete(sub.channel);
          const err = new HeraldError("unsubscribed", `the server removed the subscription: ${frame.reason}`);
          for (const l of sub.listeners) this.failListener(l, err);
        }
        break;
      }
      case "disconnect":
        this.lastDisconnect = { code: frame.code, reason: frame.reason, reconnect: frame.reconnect };
        break;
      case "error":
        this.emit("error", HeraldError.from(frame.error));
        break;
      default:
        break;
    }
  }

  private onWelcome(w: WelcomeFrame): void {
    this.attempt = 0;
    this.clientId = w.client;
    this.userId = w.user;
    if (w.ping_interval_ms > 0) this.pingIntervalMs = w.ping_interval_ms;
    this.armWatchdog(this.pingIntervalMs);
    this.setState("connected");
    this.scheduleRefresh();

    const auto = new Set<string>();
    for (const s of w.subscriptions) {
      auto.add(s.channel);
      let sub = this.subs.get(s.channel);
      if (!sub) {
        sub = { channel: s.channel, listeners: new Set(), position: null, auto: true, status: "idle", buffer: [], info: null };
        this.subs.set(s.channel, sub);
      }
      sub.auto = true;
      const prev = sub.position;
      if (prev && prev.epoch === s.epoch && prev.offset < s.offset) {
        // Publications were missed while away. The server already subscribed us from its
        // current position, so leave and come back with `since` to get the replay.
        sub.status = "subscribing";
        this.request({ type: "unsubscribe", channel: s.channel }).catch(() => {});
        this.sendSubscribe(sub);
        continue;
      }
      const resubscribed = prev !== null;
      const recovered = !resubscribed || (prev.epoch === s.epoch && prev.offset === s.offset);
      sub.position = { channel: s.channel, offset: s.offset, epoch: s.epoch };
      sub.status = "subscribed";
      this.established(sub, { channel: s.channel, offset: s.offset, epoch: s.epoch, resubscribed, recovered, lost: resubscribed && !recovered });
    }
    for (const sub of [...this.subs.values()]) {
      if (auto.has(sub.channel)) continue;
      if (sub.listeners.size === 0) this.subs.delete(sub.channel);
      else this.sendSubscribe(sub);
    }
    this.emit("connected", { client: w.client, user: w.user });
  }

  // ---- requests ---------------------------------------------------------------------------

  private request(frame: { type: string; [field: string]: unknown }): Promise<ReplyFrame> {
    if (!this.connected || !this.transport) {
      return Promise.reject(new HeraldError("not_connected", "not connected to the gateway"));
    }
    const id = this.nextId++;
    const transport = this.transport;
    return new Promise<ReplyFrame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new HeraldError("timeout", `no reply to ${frame.type} within the request timeout`));
      }, this.opts.requestTimeoutMs ?? 10_000);
      this.pending.set(id, { resolve, reject, timer });
      transport.send(JSON.stringify({ ...frame, id }));
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

  // ---- subscriptions ----------------------------------------------------------------------

  private sendSubscribe(sub: Sub): void {
    sub.status = "subscribing";
    const since = sub.position ? { offset: sub.position.offset, epoch: sub.position.epoch } : undefined;
    const frame = since ? { type: "subscribe", channel: sub.channel, since } : { type: "subscribe", channel: sub.channel };
    this.request(frame).then(
      (reply) => this.onSubscribeReply(sub, reply as unknown as ReplyFrame & SubscribeReply, since !== undefined),
      (err: HeraldError) => {
        if (this.subs.get(sub.channel) !== sub) return;
        if (err.code === "disconnected" || err.code === "not_connected") return; // retried on reconnect
        this.subs.delete(sub.channel);
        for (const l of sub.listeners) this.failListener(l, err);
      },
    );
  }

  private onSubscribeReply(sub: Sub, reply: SubscribeReply, resubscribed: boolean): void {
    if (this.subs.get(sub.channel) !== sub || (sub.listeners.size === 0 && !sub.auto)) {
      if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
      this.request({ type: "unsubscribe", channel: sub.channel }).catch(() => {});
      return;
    }
    const recovered = resubscribed && reply.recovered && sub.position?.epoch === reply.epoch;
    if (!recovered) {
      // Start from the reply's position: nothing older is delivered.
      sub.position = { channel: sub.channel, offset: reply.offset, epoch: reply.epoch };
    } else {
      for (const p of reply.publications) this.deliver(sub, p.offset, p.data);
      if (sub.position && sub.position.offset < reply.offset) sub.position.offset = reply.offset;
    }
    sub.status = "subscribed";
    const buffered = sub.buffer;
    sub.buffer = [];
    for (const p of buffered) this.deliver(sub, p.offset, p.data);
    this.established(sub, {
      channel: sub.channel,
      offset: reply.offset,
      epoch: reply.epoch,
      resubscribed,
      recovered: resubscribed ? recovered : true,
      lost: resubscribed && !recovered,
    });
  }

  private established(sub: Sub, info: SubscribedInfo): void {
    sub.info = info;
    for (const l of sub.listeners) {
      settleListener(l, info);
      call(l.opts.onSubscribed, info);
      if (info.lost) call(l.opts.onRecoveryFailed, info);
    }
    this.emit("subscribed", info);
  }

  private onPub(frame: PubFrame): void {
    const sub = this.subs.get(frame.channel);
    if (!sub) return;
    if (sub.status === "subscribing") {
      sub.buffer.push(frame);
      return;
    }
    this.deliver(sub, frame.offset, frame.data);
  }

  /** Delivers each offset at most once: replays and live publications may overlap. */
  private deliver(sub: Sub, offset: number, data: unknown): void {
    const pos = sub.position;
    if (pos && offset <= pos.offset) return;
    if (pos) pos.offset = offset;
    const ctx: PublicationContext = { channel: sub.channel, offset, epoch: pos?.epoch ?? "" };
    for (const l of [...sub.listeners]) {
      try {
        (l.handler as (data: unknown, pub: PublicationContext) => void)(data, ctx);
      } catch (e) {
        reportLater(e);
      }
    }
  }

  private removeListener(sub: Sub, listener: Listener): void {
    if (!sub.listeners.delete(listener)) return;
    if (sub.listeners.size > 0 || sub.auto) return;
    if (sub.status === "subscribing") return; // the reply handler leaves the channel
    if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
    if (sub.status === "subscribed" && this.connected) {
      this.request({ type: "unsubscribe", channel: sub.channel }).catch(() => {});
    }
    sub.status = "idle";
  }

  private failListener(l: Listener, err: HeraldError): void {
    settleListener(l, err);
    if (l.opts.onError) call(l.opts.onError, err);
    else this.emit("error", err);
  }

  // ---- token refresh ----------------------------------------------------------------------

  private scheduleRefresh(retryInMs?: number): void {
    clearTimeout(this.refreshTimer);
    const getToken = this.opts.getToken;
    if (!getToken || this.opts.refreshToken === false || this.token === undefined) return;
    const lifetime = tokenLifetime(this.token);
    if (!lifetime) return;
    const delay = retryInMs ?? refreshDelay(lifetime, Date.now());
    const transport = this.transport;
    this.refreshTimer = setTimeout(() => {
      void (async () => {
        try {
          const token = await getToken();
          if (this.transport !== transport) return;
          await this.request({ type: "refresh", token });
          if (this.transport !== transport) return;
          this.token = token;
          this.scheduleRefresh();
        } catch (e) {
          if (this.transport !== transport) return;
          this.emit("error", e instanceof HeraldError ? e : new HeraldError("token", `token refresh failed: ${String(e)}`));
          // Try again while there is time; when it runs out the server closes with 4001 and
          // the reconnect fetches a fresh token.
          if (lifetime.expiresAt - Date.now() > 2_000) this.scheduleRefresh(1_000);
        }
      })();
    }, delay);
  }
}

function withToken(url: string, token: string): string {
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

function settleListener(l: Listener, r: SubscribedInfo | HeraldError): void {
  const settle = l.settle;
  l.settle = null;
  settle?.(r);
}

function call<T>(f: ((arg: T) => void) | undefined, arg: T): void {
  if (!f) return;
  try {
    f(arg);
  } catch (e) {
    reportLater(e);
  }
}
