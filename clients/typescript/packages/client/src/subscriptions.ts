// Per-channel subscription state of one `Herald` client: who listens to which channel, where
// each channel's delivery stands (offset and epoch: the `since` of the next resubscription),
// recovery after a reconnect, offset dedupe, and dispatch to the listeners. Transport-agnostic:
// it speaks protocol frames through the `SubscriptionHost` it is given.
import { reportLater } from "./emitter.js";
import { HeraldError } from "./errors.js";
import { refreshDelay, tokenLifetime } from "./token.js";
import type {
  ChannelPosition,
  ClientFrame,
  PresenceChangeFrame,
  PubFrame,
  PublicationFrom,
  ReplyFrame,
  SubscribeReply,
  UnsubscribedFrame,
} from "./protocol.js";
import type { PresenceEvent, PublicationContext, SubscribedInfo, SubscribeOptions, Unsubscribe } from "./types.js";

/** What the subscriptions need from the connection. */
export interface SubscriptionHost {
  readonly connected: boolean;
  request(frame: ClientFrame): Promise<ReplyFrame>;
  /** Reports a (re)established subscription (the client's `subscribed` event). */
  subscribed(info: SubscribedInfo): void;
  /** Reports an error nobody else handles (the client's `error` event). */
  error(err: HeraldError): void;
  /** The subscription token for `channel`, if it needs one (`getSubscriptionToken`). */
  subscriptionToken(channel: string): Promise<string | undefined>;
}

type Handler = (data: unknown, pub: PublicationContext) => void;

interface Listener {
  handler: Handler;
  opts: SubscribeOptions;
  settle: ((info: SubscribedInfo | HeraldError) => void) | null;
  /** Set on removal: a removed listener is not called again, not even mid-dispatch. */
  removed: boolean;
}

type Status = "idle" | "subscribing" | "subscribed";

/** One channel: its listeners and where its delivery stands. */
class Channel {
  readonly listeners = new Set<Listener>();
  /** Last delivered position: the `since` of the next resubscription. */
  position: ChannelPosition | null = null;
  /** Subscribed by the server at connect (`auto_subscribe`). */
  auto = false;
  status: Status = "idle";
  /** Publications that arrived before the subscribe reply. */
  buffer: PubFrame[] = [];
  info: SubscribedInfo | null = null;
  /** Renews the subscription token (`sub_refresh`) before it runs out. */
  refreshTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(readonly name: string) {}

  /** Calls `f` for each listener present when the dispatch starts and still present when its turn comes. */
  each(f: (l: Listener) => void): void {
    for (const l of [...this.listeners]) if (!l.removed) f(l);
  }
}

export class Subscriptions {
  private readonly channels = new Map<string, Channel>();

  constructor(private readonly host: SubscriptionHost) {}

  add(channel: string, handler: Handler, opts: SubscribeOptions): Unsubscribe {
    let settle: (info: SubscribedInfo | HeraldError) => void = () => {};
    const ready = new Promise<SubscribedInfo>((resolve, reject) => {
      settle = (r) => (r instanceof HeraldError ? reject(r) : resolve(r));
    });
    // The caller may ignore `ready`; its rejection is also reported through `onError`.
    ready.catch(() => {});
    const listener: Listener = { handler, opts, settle, removed: false };
    const ch = this.channel(channel);
    ch.listeners.add(listener);
    if (ch.status === "subscribed" && ch.info) {
      settleListener(listener, { ...ch.info, resubscribed: false, recovered: true, lost: false });
    } else if (ch.status === "idle" && this.host.connected) {
      this.sendSubscribe(ch);
    }
    const unsubscribe = () => this.remove(ch, listener);
    return Object.assign(unsubscribe, { ready });
  }

  /** A new connection's `welcome`: take the auto-subscriptions, restore the others with `since`. */
  welcome(subscriptions: ChannelPosition[]): void {
    const auto = new Set<string>();
    for (const s of subscriptions) {
      auto.add(s.channel);
      const ch = this.channel(s.channel);
      ch.auto = true;
      const prev = ch.position;
      if (prev && prev.epoch === s.epoch && prev.offset < s.offset) {
        // Publications were missed while away. The server already subscribed us from its
        // current position, so leave and come back with `since` to get the replay.
        ch.status = "subscribing";
        this.host.request({ type: "unsubscribe", channel: s.channel }).catch(() => {});
        this.sendSubscribe(ch);
        continue;
      }
      const resubscribed = prev !== null;
      const recovered = !resubscribed || (prev.epoch === s.epoch && prev.offset === s.offset);
      ch.position = { channel: s.channel, offset: s.offset, epoch: s.epoch };
      ch.status = "subscribed";
      this.established(ch, { channel: s.channel, offset: s.offset, epoch: s.epoch, resubscribed, recovered, lost: resubscribed && !recovered });
    }
    for (const ch of [...this.channels.values()]) {
      if (auto.has(ch.name)) continue;
      if (ch.listeners.size === 0) this.channels.delete(ch.name);
      else this.sendSubscribe(ch);
    }
  }

  /** The connection is gone: every channel waits for the next `welcome`. */
  disconnected(): void {
    for (const ch of this.channels.values()) {
      ch.status = "idle";
      ch.buffer = [];
      ch.auto = false;
      clearTimeout(ch.refreshTimer);
    }
  }

  pub(frame: PubFrame): void {
    const ch = this.channels.get(frame.channel);
    if (!ch) return;
    if (ch.status === "subscribing") {
      ch.buffer.push(frame);
      return;
    }
    this.deliver(ch, frame.offset, frame.data, frame.from);
  }

  presence(frame: PresenceChangeFrame): void {
    const ch = this.channels.get(frame.channel);
    if (!ch) return;
    const event: PresenceEvent = { type: frame.type, channel: frame.channel, user: frame.user, client: frame.client };
    ch.each((l) => call(l.opts.onPresence, event));
  }

  unsubscribed(frame: UnsubscribedFrame): void {
    const ch = this.channels.get(frame.channel);
    if (!ch) return;
    if (frame.reason === "resubscribe" || frame.reason === "token_expired") {
      // The server lost continuity for this channel (resubscribe with `since`), or its
      // subscription token ran out before it was renewed (resubscribe with a fresh one).
      clearTimeout(ch.refreshTimer);
      ch.status = "idle";
      ch.auto = false;
      if (this.host.connected) this.sendSubscribe(ch);
      return;
    }
    this.fail(ch, new HeraldError("unsubscribed", `the server removed the subscription: ${frame.reason}`));
  }

  /** A channel the server refused outside a reply (SSE `?channel=` at connect). */
  refused(channel: string, err: HeraldError): boolean {
    const ch = this.channels.get(channel);
    if (!ch) return false;
    this.fail(ch, err);
    return true;
  }

  private channel(name: string): Channel {
    let ch = this.channels.get(name);
    if (!ch) {
      ch = new Channel(name);
      this.channels.set(name, ch);
    }
    return ch;
  }

  private sendSubscribe(ch: Channel): void {
    ch.status = "subscribing";
    clearTimeout(ch.refreshTimer);
    const since = ch.position ? { offset: ch.position.offset, epoch: ch.position.epoch } : undefined;
    const failed = (err: HeraldError) => {
      if (this.channels.get(ch.name) !== ch) return;
      if (err.code === "disconnected" || err.code === "not_connected") return; // retried on reconnect
      this.fail(ch, err);
    };
    this.host.subscriptionToken(ch.name).then((token) => {
      if (this.channels.get(ch.name) !== ch || ch.status !== "subscribing") return;
      const frame: ClientFrame = { type: "subscribe", channel: ch.name };
      if (since) frame["since"] = since;
      if (token) frame["token"] = token;
      this.host.request(frame).then((reply) => {
        this.onSubscribeReply(ch, reply as unknown as ReplyFrame & SubscribeReply, since !== undefined);
        if (token) this.scheduleRefresh(ch, token);
      }, failed);
    }, failed);
  }

  /** Renews `ch`'s subscription token before it runs out; on failure the server's
   * `unsubscribed` (`token_expired`) makes the channel resubscribe with a fresh one. */
  private scheduleRefresh(ch: Channel, token: string): void {
    const lifetime = tokenLifetime(token);
    if (!lifetime || this.channels.get(ch.name) !== ch) return;
    clearTimeout(ch.refreshTimer);
    ch.refreshTimer = setTimeout(() => {
      if (this.channels.get(ch.name) !== ch || ch.status !== "subscribed" || !this.host.connected) return;
      this.host
        .subscriptionToken(ch.name)
        .then(async (fresh) => {
          if (!fresh) return;
          await this.host.request({ type: "sub_refresh", channel: ch.name, token: fresh });
          this.scheduleRefresh(ch, fresh);
        })
        .catch(() => {});
    }, refreshDelay(lifetime));
  }

  private onSubscribeReply(ch: Channel, reply: SubscribeReply, resubscribed: boolean): void {
    if (this.channels.get(ch.name) !== ch || (ch.listeners.size === 0 && !ch.auto)) {
      if (this.channels.get(ch.name) === ch) this.channels.delete(ch.name);
      this.host.request({ type: "unsubscribe", channel: ch.name }).catch(() => {});
      return;
    }
    const recovered = resubscribed && reply.recovered && ch.position?.epoch === reply.epoch;
    if (!recovered) {
      // Start from the reply's position: nothing older is delivered.
      ch.position = { channel: ch.name, offset: reply.offset, epoch: reply.epoch };
    } else {
      for (const p of reply.publications) this.deliver(ch, p.offset, p.data, p.from);
      if (ch.position && ch.position.offset < reply.offset) ch.position.offset = reply.offset;
    }
    ch.status = "subscribed";
    const buffered = ch.buffer;
    ch.buffer = [];
    for (const p of buffered) this.deliver(ch, p.offset, p.data, p.from);
    this.established(ch, {
      channel: ch.name,
      offset: reply.offset,
      epoch: reply.epoch,
      resubscribed,
      recovered: resubscribed ? recovered : true,
      lost: resubscribed && !recovered,
    });
  }

  private established(ch: Channel, info: SubscribedInfo): void {
    ch.info = info;
    ch.each((l) => {
      settleListener(l, info);
      if (!l.removed) call(l.opts.onSubscribed, info);
      if (info.lost && !l.removed) call(l.opts.onRecoveryFailed, info);
    });
    this.host.subscribed(info);
  }

  /** Delivers each offset at most once: replays and live publications may overlap. */
  private deliver(ch: Channel, offset: number, data: unknown, from: PublicationFrom): void {
    const pos = ch.position;
    if (pos && offset <= pos.offset) return;
    if (pos) pos.offset = offset;
    const ctx: PublicationContext = { channel: ch.name, offset, epoch: pos?.epoch ?? "", from };
    ch.each((l) => {
      try {
        l.handler(data, ctx);
      } catch (e) {
        reportLater(e);
      }
    });
  }

  private remove(ch: Channel, listener: Listener): void {
    listener.removed = true;
    if (!ch.listeners.delete(listener)) return;
    if (ch.listeners.size > 0 || ch.auto) return;
    clearTimeout(ch.refreshTimer);
    if (ch.status === "subscribing") return; // the reply handler leaves the channel
    if (this.channels.get(ch.name) === ch) this.channels.delete(ch.name);
    if (ch.status === "subscribed" && this.host.connected) {
      this.host.request({ type: "unsubscribe", channel: ch.name }).catch(() => {});
    }
    ch.status = "idle";
  }

  private fail(ch: Channel, err: HeraldError): void {
    clearTimeout(ch.refreshTimer);
    if (this.channels.get(ch.name) === ch) this.channels.delete(ch.name);
    ch.each((l) => {
      settleListener(l, err);
      if (l.opts.onError) call(l.opts.onError, err);
      else this.host.error(err);
    });
  }
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
